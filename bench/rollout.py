"""Rollout throughput: generated tokens/s of our batched multi-turn rollout at batch 1, 4, 8, 16 on
the same questions (batch 1 = one HF ``generate`` call per sample and turn, the per-sample
baseline), and single-stream decode tokens/s against this machine's memory-bandwidth bound
(bytes of weights read per token)."""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import memory_bandwidth_gbs, save
from stepsearch_lib.config import get_config
from stepsearch_lib.models import policy_from_config
from stepsearch_lib.retrieval import profile_retriever
from stepsearch_lib.rollout import rollout_from_config
from stepsearch_lib.sft import warm_start_dir
from stepsearch_lib.stepsearch_format import read_stepsearch


def load_bench_policy(cfg):
    """The profile policy with its SFT warm start when one exists (so rollouts really search)."""
    sft = warm_start_dir(cfg)
    model, tok = policy_from_config(cfg, adapter=sft if (sft / "adapter_config.json").is_file() else None)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model, tok, sft.is_dir()


def decode_tokens_per_s(model, tok, new_tokens: int = 128) -> float:
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        t0 = time.perf_counter()
        model.generate(
            ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return new_tokens / (time.perf_counter() - t0)


def run(profile: str = "cpu", n_questions: int = 16, batches=(1, 4, 8, 16), bf16_batches=(1, 16)) -> dict:
    """Batch sizes in the policy's float32, then ``bf16_batches`` sampling from a bfloat16 copy
    (``rollout.generation_dtype``); speed-ups are against float32 batch 1 (per-sample generate)."""
    from dataclasses import replace

    cfg = get_config(profile)
    model, tok, warm = load_bench_policy(cfg)
    model.eval()
    retriever = profile_retriever(cfg)
    questions = [r["question"] for r in read_stepsearch(cfg.path("data", "stepsearch_dev.jsonl"))[:n_questions]]
    rows = []
    for dtype, sizes in (("", batches), ("bfloat16", bf16_batches)):
        for b in sizes:
            bcfg = replace(cfg, rollout=replace(cfg.rollout, batch_size=b, generation_dtype=dtype))
            t0 = time.perf_counter()
            trajs = rollout_from_config(model, tok, questions, retriever, bcfg, greedy=True)
            s = time.perf_counter() - t0
            generated = sum(sum(t.loss_mask) for t in trajs)
            rows.append(
                {
                    "batch": b,
                    "generation_dtype": dtype or "float32",
                    "seconds": s,
                    "generated_tokens": generated,
                    "tokens_per_s": generated / s,
                    "searches_per_question": sum(t.num_searches for t in trajs) / len(trajs),
                }
            )
    for r in rows:
        r["speedup_vs_batch1"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    bw = memory_bandwidth_gbs()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    decode = decode_tokens_per_s(model, tok)
    bound = bw * 1e9 / weight_bytes
    result = {
        "policy": cfg.model.policy,
        "warm_start": warm,
        "questions": len(questions),
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "rows": rows,
        "decode": {
            "tokens_per_s": decode,
            "memory_bandwidth_gbs": bw,
            "weight_mb": weight_bytes / 2**20,
            "bound_tokens_per_s": bound,
            "fraction_of_bound": decode / bound,
        },
        "goal": {"speedup_at_16": 5, "fraction_of_bound": 0.5},
    }
    save("rollout", result)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--questions", type=int, default=16)
    a = ap.parse_args()
    print(run(a.profile, a.questions))
