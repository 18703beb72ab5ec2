"""Two study runs side by side on 1 thread each vs one run on every core -> bench/results/study_jobs.json.

The unit of work is one cpu study update: a sampled rollout of 8 training questions (the study's warm start when it
exists, else the untrained policy) and one StePPO update on a batch of the real shape (`update_profile`). Measured:

* ``alone``: one process with ``torch.get_num_threads()`` = all cores does the unit;
* ``side_by_side``: ``cores`` processes with 1 thread each do it at the same time;

``throughput_ratio`` = work per second side by side / alone. It decides ``make study JOBS=2``: generation is a
per-token Python loop that one core serves, so a second thread mostly waits, while a second run has its own loop.

    python -m bench study_jobs        (needs `stepsearch construct --profile cpu`: the data and index)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from stepsearch_lib.config import PROJECT_ROOT
from stepsearch_lib.fileio import write_json

RESULTS = PROJECT_ROOT / "bench" / "results"
QUESTIONS = 8


def unit() -> dict:
    """One rollout + one update in this process; its seconds and what it generated."""
    import torch

    from bench.update_profile import synthetic_batch
    from stepsearch_lib import steppo
    from stepsearch_lib.fileio import require
    from stepsearch_lib.models import compute_autocast
    from stepsearch_lib.overrides import apply_overrides
    from stepsearch_lib.retrieval import profile_retriever
    from stepsearch_lib.rollout import rollout_from_config
    from stepsearch_lib.sft import warm_start_dir
    from stepsearch_lib.stepsearch_format import read_stepsearch
    from stepsearch_lib.study import study_config
    from stepsearch_lib.train import build_models, set_activation_checkpointing

    cfg = study_config("cpu")
    warm = warm_start_dir(cfg)
    cfg = apply_overrides(cfg, {"train.init_adapter": str(warm) if warm.is_dir() else ""})
    records = read_stepsearch(require(cfg.path("data", "stepsearch_train.jsonl"), "stepsearch construct --profile cpu"))
    actor, critic, tok, opt_a, opt_c = build_models(cfg)
    set_activation_checkpointing([actor, critic.backbone], False)
    retriever = profile_retriever(cfg)
    t0 = time.perf_counter()
    trajs = rollout_from_config(actor, tok, [r["question"] for r in records[:QUESTIONS]], retriever, cfg, seed=1)
    rollout_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with compute_autocast("bfloat16"):
        steppo.steppo_update(actor, critic, opt_a, opt_c, synthetic_batch(), cfg.ppo)
    return {
        "torch_threads": torch.get_num_threads(),
        "warm_start": warm.name if warm.is_dir() else None,
        "rollout_s": rollout_s,
        "update_s": time.perf_counter() - t0,
        "response_tokens": sum(len(t.response_ids) for t in trajs),
    }


def _spawn(threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        [sys.executable, "-m", "bench.study_jobs", "--unit"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"bench.study_jobs --unit exited {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def run() -> dict:
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    alone = _result(_spawn(cores))
    alone_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [_spawn(1) for _ in range(cores)]
    try:
        side = [_result(p) for p in procs]
    finally:  # one failed: do not leave the others running
        for p in procs:
            p.kill()
    side_wall = time.perf_counter() - t0
    unit_s = {
        "alone": alone["rollout_s"] + alone["update_s"],
        "side_by_side": [s["rollout_s"] + s["update_s"] for s in side],
    }
    result = {
        "cores": cores,
        "alone": alone,
        "side_by_side": side,
        "wall_s": {"alone": alone_wall, "side_by_side": side_wall},
        "unit_s": unit_s,
        # work per second: `cores` units in the slowest side-by-side unit's time vs one unit alone
        "throughput_ratio": cores * unit_s["alone"] / max(unit_s["side_by_side"]),
        "rollout_ratio": cores * alone["rollout_s"] / max(s["rollout_s"] for s in side),
        "update_ratio": cores * alone["update_s"] / max(s["update_s"] for s in side),
        "same_rollout": all(s["response_tokens"] == alone["response_tokens"] for s in side),
    }
    write_json(RESULTS / "study_jobs.json", result)
    print(f"[bench] study_jobs: throughput x{result['throughput_ratio']:.2f} -> {RESULTS / 'study_jobs.json'}")
    return result


if __name__ == "__main__":
    print(json.dumps(unit()) if "--unit" in sys.argv else run())
