"""Training cost: a StePPO update vs a global-reward PPO update on identical rollouts (goal <= 1.3x),
peak memory with / without 4-bit and with a shared / separate critic (one subprocess each, so peak
RSS is per configuration), and update time vs sequence length."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.common import OUT_DIR, save
from stepsearch_lib.batching import PPOBatch, build_batch
from stepsearch_lib.config import get_config
from stepsearch_lib.fileio import peak_rss_mb
from stepsearch_lib.retrieval import profile_retriever
from stepsearch_lib.rewards import gold_of, score_trajectory
from stepsearch_lib.rollout import rollout_from_config
from stepsearch_lib.sft import warm_start_dir
from stepsearch_lib.steppo import steppo_update
from stepsearch_lib.stepsearch_format import read_stepsearch
from stepsearch_lib.train import build_models

BATCH_FILE = OUT_DIR / "training_batches.safetensors"


def _cfg(profile: str, **model):
    cfg = get_config(profile)
    sft = warm_start_dir(cfg)
    init = "sft" if (sft / "adapter_config.json").is_file() else ""
    return replace(cfg, model=replace(cfg.model, **model), train=replace(cfg.train, init_adapter=init))


def make_batches(cfg, n: int) -> dict[str, PPOBatch]:
    actor, _critic, tok, *_ = build_models(cfg)
    records = read_stepsearch(cfg.path("data", "stepsearch_train.jsonl"))[:n]
    trajs = rollout_from_config(actor, tok, [r["question"] for r in records], profile_retriever(cfg), cfg, seed=1)
    scored = [
        score_trajectory(t.response_text(tok), t.queries, t.step_docs, reward_cfg=cfg.reward, **gold_of(r))
        for t, r in zip(trajs, records)
    ]
    return {
        "steppo": build_batch(trajs, scored, tok.pad_token_id, True),
        "ppo": build_batch(trajs, scored, tok.pad_token_id, False),
    }


def save_batches(batches: dict[str, PPOBatch], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{k}.{f}": getattr(b, f).contiguous()
        for k, b in batches.items()
        for f in ("input_ids", "attention_mask", "action_mask", "token_rewards")
    }
    meta = {k: json.dumps(b.response_start) for k, b in batches.items()}
    save_file(tensors, str(path), metadata=meta)


def load_batches(path: Path) -> dict[str, PPOBatch]:
    from safetensors import safe_open

    t = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return {
        k: PPOBatch(
            t[f"{k}.input_ids"],
            t[f"{k}.attention_mask"],
            t[f"{k}.action_mask"],
            t[f"{k}.token_rewards"],
            json.loads(meta[k]),
        )
        for k in meta
    }


def timed_update(cfg, batch: PPOBatch, models=None) -> tuple[float, dict]:
    actor, critic, _tok, opt_a, opt_c = models or build_models(cfg)
    t0 = time.perf_counter()
    out = steppo_update(actor, critic, opt_a, opt_c, batch, cfg.ppo, seed=0)
    return time.perf_counter() - t0, out


def _restore(models, snapshot):
    actor, critic, _tok, opt_a, opt_c = models
    with torch.no_grad():
        for p, v in zip(
            [p for g in opt_a.param_groups for p in g["params"]] + [p for g in opt_c.param_groups for p in g["params"]],
            snapshot,
        ):
            p.copy_(v)
    opt_a.state.clear()
    opt_c.state.clear()


def variant(profile: str, load_in_4bit: bool, critic: str) -> dict:
    """One update on the saved StePPO batch in this process; its time and peak RSS."""
    cfg = _cfg(profile, load_in_4bit=load_in_4bit, critic=critic)
    s, _ = timed_update(cfg, load_batches(BATCH_FILE)["steppo"])
    return {"load_in_4bit": load_in_4bit, "critic": critic, "update_s": s, "peak_rss_mb": peak_rss_mb()}


def run(profile: str = "cpu", n: int = 4, repeats: int = 2) -> dict:
    cfg = _cfg(profile)
    batches = make_batches(cfg, n)
    save_batches(batches, BATCH_FILE)
    models = build_models(cfg)
    snapshot = [p.detach().clone() for g in models[3].param_groups + models[4].param_groups for p in g["params"]]
    times = {"steppo": [], "ppo": []}
    for _ in range(repeats):  # interleaved, from the same weights each time
        for algo in ("steppo", "ppo"):
            _restore(models, snapshot)
            times[algo].append(timed_update(cfg, batches[algo], models)[0])
    by_length = []
    full = batches["steppo"].input_ids.shape[1]
    for length in sorted({min(full, x) for x in (256, 512, 1024, full)}):
        b = batches["steppo"]
        cut = PPOBatch(
            b.input_ids[:, :length],
            b.attention_mask[:, :length],
            b.action_mask[:, :length],
            b.token_rewards[:, :length],
            b.response_start,
        )
        _restore(models, snapshot)
        by_length.append({"tokens": length, "update_s": timed_update(cfg, cut, models)[0]})
    del models
    variants = []
    for q4 in (False, True):
        for critic in ("shared", "separate"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.training",
                    "--profile",
                    profile,
                    "--variant",
                    json.dumps({"load_in_4bit": q4, "critic": critic}),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            variants.append(json.loads(out.stdout.strip().splitlines()[-1]))
    stepppo_s, ppo_s = min(times["steppo"]), min(times["ppo"])
    result = {
        "policy": cfg.model.policy,
        "trajectories": n,
        "sequence_tokens": full,
        "trainable_tokens": int(batches["steppo"].action_mask.sum()),
        "steppo_update_s": stepppo_s,
        "ppo_update_s": ppo_s,
        "ratio": stepppo_s / ppo_s,
        "repeats": times,
        "by_length": by_length,
        "variants": variants,
        "goal": {"ratio": 1.3},
    }
    save("training", result)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--trajectories", type=int, default=4)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(variant(a.profile, **json.loads(a.variant))))
    else:
        print(run(a.profile, a.trajectories))
