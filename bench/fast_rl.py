"""Fast CPU RL, measured side by side in one process -> bench/results/summary.json (+ fast_rl.json).

Real parts only: SmolLM2-135M-Instruct (the cpu profile's policy with its fresh LoRA; its warm start when one
has been trained), real BM25 over the shared 41.7k-passage corpus, MuSiQue dev questions whose gold for the
rewards comes from their official decomposition (sub-questions, supporting paragraphs).

* rollout: generated tokens/s of the KV-cache engine at batch 16 vs per-sample HF ``generate`` (engine ``hf``,
  batch 1, re-prefill every turn) in the same multi-turn loop, sampling as in training; and the batch-16 rate
  against this CPU's roofline for the model (measured bf16 GEMM FLOP/s and memory bandwidth).
* update: one StePPO update of 8 real trajectories, bf16 autocast + sampler log-probs + checkpointing by token
  count vs the float32 path of before (old log-probs recomputed, checkpointing always), same weights, same process.
* StePPO / global-reward PPO update time on the same rollouts; the median full RL step of 8 questions.

    python -m bench.fast_rl [--questions 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import gemm_gflops, memory_bandwidth_gbs
from stepsearch_lib.batching import build_batch
from stepsearch_lib.config import PROJECT_ROOT, get_config
from stepsearch_lib.data import load_corpus, load_questions
from stepsearch_lib.decompose import resolved_sub_questions
from stepsearch_lib.fileio import peak_rss_mb, write_json
from stepsearch_lib.index import build_index
from stepsearch_lib.models import compute_autocast
from stepsearch_lib.overrides import apply_overrides
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.rewards import gold_of, score_trajectory
from stepsearch_lib.rollout import rollout_from_config
from stepsearch_lib.sft import warm_start_dir
from stepsearch_lib.steppo import steppo_update
from stepsearch_lib.train import build_models, set_activation_checkpointing, train

RESULTS = PROJECT_ROOT / "bench" / "results"
"""Committed results of this benchmark (small JSON)."""

GOALS = {
    "rollout_speedup_b16": 5.0,
    "rollout_roofline_fraction_b16": 0.4,
    "update_speedup": 4.0,
    "rl_step_s_8q": 45.0,
    "steppo_over_ppo": 1.1,
}
"""Issue 17's goals (>= for the first three, <= for the last two)."""


def records_from_musique(cfg, n: int) -> list[dict]:
    """StepSearch-shaped records (question, answers, gold sub-queries, gold paragraphs) of MuSiQue dev questions."""
    out = []
    for r in load_questions(cfg.data_file(cfg.data.dev_file), limit=4 * n):
        subs = resolved_sub_questions(r)
        if not subs or any(s.paragraph is None for s in subs):
            continue
        out.append(
            {
                "id": r.id,
                "question": r.question,
                "final_answer": r.answers[0],
                "answer_aliases": r.answers[1:],
                "sub_searchs": [[s.question] for s in subs],
                "sub_support_docs": [{"title": s.paragraph.title, "paragraph_text": s.paragraph.text} for s in subs],
            }
        )
    return out[:n]


def bm25_over_the_corpus(cfg) -> object:
    folder = PROJECT_ROOT / "runs" / "bench" / "bm25_full_corpus"
    if not (folder / "meta.json").is_file():
        build_index("bm25", load_corpus(cfg.data_file(cfg.data.corpus_file)), folder)
    return load_retriever(folder)


def roofline(params: int, batch: int = 16) -> dict:
    """Tokens/s bound of one decode step of ``batch`` rows with bf16 weights: max(compute, weight traffic)."""
    flops = gemm_gflops(2048, 2048, 2048, repeat=5) * 1e9
    bw = memory_bandwidth_gbs() * 1e9
    step_s = max(batch * 2 * params / flops, 2 * params / bw)
    return {
        "gemm_bf16_gflops": flops / 1e9,
        "memory_bandwidth_gbs": bw / 1e9,
        "params": params,
        "bound_tokens_per_s": batch / step_s,
        "bound": "compute" if batch * 2 * params / flops > 2 * params / bw else "memory",
    }


def rollout_rate(model, tok, records, retriever, cfg, **rollout) -> tuple[dict, list]:
    rcfg = replace(cfg, rollout=replace(cfg.rollout, **rollout))
    t0 = time.perf_counter()
    trajs = rollout_from_config(model, tok, [r["question"] for r in records], retriever, rcfg, seed=0)
    s = time.perf_counter() - t0
    generated = sum(sum(t.loss_mask) for t in trajs)
    return {
        **rollout,
        "questions": len(records),
        "seconds": s,
        "generated_tokens": generated,
        "tokens_per_s": generated / s,
        "searches_per_question": sum(t.num_searches for t in trajs) / len(trajs),
        "response_tokens": sum(len(t.response_ids) for t in trajs) / len(trajs),
    }, trajs


def timed_update(models, batch, ppo, compute: str, checkpointing: bool) -> tuple[float, dict]:
    actor, critic, _tok, opt_a, opt_c = models
    set_activation_checkpointing([actor, critic.backbone], checkpointing)
    t0 = time.perf_counter()
    with compute_autocast(compute):
        out = steppo_update(actor, critic, opt_a, opt_c, batch, ppo, seed=0)
    return time.perf_counter() - t0, out


def run(profile: str = "cpu", n_questions: int = 16, baseline_questions: int = 4) -> dict:
    if torch.get_num_threads() < (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count())
    cfg = get_config(profile)
    warm = (warm_start_dir(cfg) / "adapter_config.json").is_file()
    cfg = apply_overrides(cfg, {"train.init_adapter": "sft" if warm else ""})
    records = records_from_musique(cfg, n_questions)
    retriever = bm25_over_the_corpus(cfg)
    models = build_models(cfg)
    actor, tok = models[0], models[2]
    snapshot = [{k: v.clone() for k, v in m.state_dict().items()} for m in (actor, models[1])]

    # ---- rollout: KV engine at batch 16 vs per-sample HF generate, same loop, same sampling
    kv, trajs = rollout_rate(
        actor, tok, records, retriever, cfg, engine="kv", batch_size=16, generation_dtype="bfloat16"
    )
    kv_autocast, _ = rollout_rate(actor, tok, records, retriever, cfg, engine="kv", batch_size=16)
    base, _ = rollout_rate(
        actor,
        tok,
        records[:baseline_questions],
        retriever,
        replace(cfg, model=replace(cfg.model, compute_dtype="float32")),
        engine="hf",
        batch_size=1,
    )
    params = sum(p.numel() for n, p in actor.named_parameters() if "lora_" not in n)
    roof = roofline(params)

    # ---- one update of 8 real trajectories: new path vs the float32 path of before, same weights
    eight = trajs[:8]
    scored = [
        score_trajectory(t.response_text(tok), t.queries, t.step_docs, reward_cfg=cfg.reward, **gold_of(r))
        for t, r in zip(eight, records[:8])
    ]
    batches = {
        "steppo": build_batch(eight, scored, tok.pad_token_id, True),
        "ppo": build_batch(eight, scored, tok.pad_token_id, False),
    }
    before = replace(batches["steppo"], old_logprobs=None)  # before: old log-probs recomputed by a no-grad pass
    threshold = cfg.train.checkpoint_above_tokens
    mb_tokens = batches["steppo"].input_ids.shape[1] * min(cfg.ppo.minibatch_size, 8)

    critic, opt_a, opt_c = models[1], models[3], models[4]

    def restore():
        for m, state in zip((actor, critic), snapshot):
            m.load_state_dict(state)
        opt_a.state.clear()
        opt_c.state.clear()

    times: dict[str, list[float]] = {"fp32": [], "new": [], "new_ppo": []}
    losses = {}
    for _ in range(1):  # in turn, from the same weights each time
        restore()
        s, losses["fp32"] = timed_update(models, before, cfg.ppo, "float32", True)
        times["fp32"].append(s)
        restore()
        s, losses["new"] = timed_update(models, batches["steppo"], cfg.ppo, "bfloat16", mb_tokens > threshold)
        times["new"].append(s)
        restore()
        s, _ = timed_update(models, batches["ppo"], cfg.ppo, "bfloat16", mb_tokens > threshold)
        times["new_ppo"].append(s)
    restore()
    models = critic = opt_a = opt_c = None  # free the update's models before the full RL steps

    # ---- full RL steps of 8 questions (rollout + rewards + update), the cpu profile as configured
    with tempfile.TemporaryDirectory() as tmp:
        step_cfg = apply_overrides(cfg, {"artifact_root": tmp, "train.questions_per_step": 8, "train.save_every": 100})
        path = train(step_cfg, "steppo", steps=3, records=records, retriever=retriever)
        rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
    step_s = [r["time/step_s"] for r in rows]

    cpu_model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    summary = {
        "rollout_speedup_b16": kv["tokens_per_s"] / base["tokens_per_s"],
        "rollout_roofline_fraction_b16": kv["tokens_per_s"] / roof["bound_tokens_per_s"],
        "update_speedup": min(times["fp32"]) / min(times["new"]),
        "update_loss_difference": {
            k: abs(losses["new"][k] - losses["fp32"][k]) for k in ("losses/policy", "losses/value", "losses/entropy")
        },
        "rl_step_s_8q": statistics.median(step_s),
        "steppo_over_ppo": min(times["new"]) / min(times["new_ppo"]),
        "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model,
        "peak_rss_mb": peak_rss_mb(),
        "goals": GOALS,
    }
    detail = {
        "policy": cfg.model.policy,
        "warm_start": warm,
        "questions": len(records),
        "rollout": {"kv_b16_bf16_copy": kv, "kv_b16_autocast": kv_autocast, "hf_b1_float32": base},
        "roofline_b16": roof,
        "update": {
            "seconds": times,
            "losses": losses,
            "minibatch_tokens": mb_tokens,
            "checkpointing_new_path": mb_tokens > threshold,
            "sequence_tokens": int(before.input_ids.shape[1]),
            "trainable_tokens": int(before.action_mask.sum()),
        },
        "rl_steps": [
            {k: v for k, v in r.items() if k.startswith(("time/", "rollout/", "memory/", "losses/ratio"))} for r in rows
        ],
    }
    write_json(RESULTS / "summary.json", summary)
    write_json(RESULTS / "fast_rl.json", detail)
    print(f"[bench] fast_rl: {RESULTS / 'summary.json'}")
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--questions", type=int, default=16)
    a = ap.parse_args()
    print(run(a.profile, a.questions))
