"""Rewards: trajectories/s of the closed-form TF-IDF path vs the per-pair reference path, on the same
real trajectories (scripted behaviours over real questions, documents retrieved for real); values must match."""

from __future__ import annotations

import argparse

from bench.common import save, timed
from stepsearch_lib.config import get_config
from stepsearch_lib.retrieval import profile_retriever
from stepsearch_lib.rewards import gold_of, information_gain
from stepsearch_lib.scripted import scripted_trajectories
from stepsearch_lib.stepsearch_format import read_stepsearch


def run(profile: str = "cpu", n_records: int = 40) -> dict:
    cfg = get_config(profile)
    records = read_stepsearch(cfg.path("data", "stepsearch_train.jsonl"))[:n_records]
    trajs = scripted_trajectories(records, profile_retriever(cfg), cfg.retrieval.topk, cfg.rollout.doc_words)
    by_id = {str(r["id"]): r for r in records}
    jobs = [(t["step_docs"], gold_of(by_id[t["id"]])["gold_docs"]) for t in trajs]

    def score(fast: bool):
        return [information_gain(docs, gold, fast=fast) for docs, gold in jobs]

    fast_vals, fast_s = timed(score, True, repeat=3)
    ref_vals, ref_s = timed(score, False, repeat=1)
    diff = max((abs(a - b) for fv, rv in zip(fast_vals, ref_vals) for a, b in zip(fv, rv)), default=0.0)
    result = {
        "trajectories": len(jobs),
        "search_steps": sum(len(d) for d, _ in jobs),
        "fast_traj_per_s": len(jobs) / fast_s,
        "reference_traj_per_s": len(jobs) / ref_s,
        "speedup": ref_s / fast_s,
        "max_abs_difference": diff,
        "goal": {"speedup": 20, "max_abs_difference": 1e-6},
    }
    save("rewards", result)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu")
    print(run(ap.parse_args().profile))
