"""Data parallelism: the training entry under `accelerate launch` with 2 CPU processes (gloo)."""

import json
import os
import subprocess
import sys

import pytest

from stepsearch_lib.checkpoint import latest_checkpoint
from stepsearch_lib.config import get_config
from stepsearch_lib.overrides import parse_cli_overrides
from stepsearch_lib.stepsearch_format import write_stepsearch


def test_parse_cli_overrides_rejects_a_missing_equals_sign():
    with pytest.raises(ValueError, match="section.field=value"):
        parse_cli_overrides(["train.steps"])


def test_two_gloo_processes_train_two_steps(tmp_path, free_tcp_port, model_cache, stepsearch_records, index_dirs):
    overrides = {
        "artifact_root": str(tmp_path),
        "model.cache_dir": str(model_cache),
        "retrieval.kind": "bm25",
        "train.questions_per_step": 2,
        "rollout.max_new_tokens": 16,
        "rollout.max_turns": 1,
        "ppo.minibatch_size": 1,
        "ppo.grad_accum": 2,
    }
    cfg = get_config("smoke", overrides)
    write_stepsearch(stepsearch_records, cfg.path("data"), "stepsearch_train")
    cfg.path("index").mkdir(parents=True)
    os.symlink(index_dirs / "bm25", cfg.path("index", "bm25"))
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]
    # `--multi_gpu` selects accelerate's torchrun launcher, which also runs CPU processes (gloo);
    # `--cpu` with several processes needs an MPI installation (mpirun), which this machine lacks
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_tcp_port),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "stepsearch_lib.train",
        "--profile",
        "smoke",
        "--steps",
        "2",
        *sets,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in cfg.path("metrics", "steppo-full-s0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # written once (by process 0), not once per process
    assert all(r["time/processes"] == 2 for r in rows)
    # every checkpoint save first checks that both replicas hold identical weights
    assert latest_checkpoint(cfg.path("checkpoints", "steppo-full-s0")).name == "step-000002"
