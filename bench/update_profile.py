"""Where one cpu StePPO update spends its time, and what trimming padding buys -> bench/results/update_profile.json.

The update of issue 17's goal (8 trajectories, minibatch 2, one epoch) on the real SmolLM2-135M-Instruct with its
LoRA and shared critic, bf16 autocast, activation checkpointing off (the cpu profile's choice at this size). The
batch has the shape of a real one (prompt 300 tokens, sequences of 700-1,233 tokens, right-padded); the token ids
are random because time does not depend on them. Measured in one process:

* phases: one no-grad pass over all 8 rows (what old values and reference log-probs each cost), one minibatch's
  actor forward / backward and critic forward / backward;
* the whole update, untrimmed (every minibatch and no-grad pass at the batch's full width, as before) vs trimmed
  (`PPOBatch.select(trim=True)`, length-sorted no-grad chunks), alternating, same weights, same losses;
* the compute floor: the update's matmul FLOPs at the measured bf16 GEMM rate.

    python -m bench.update_profile
"""

from __future__ import annotations

import os
import time

import torch

from bench.common import gemm_gflops
from stepsearch_lib import steppo
from stepsearch_lib.batching import PPOBatch
from stepsearch_lib.config import PROJECT_ROOT, get_config
from stepsearch_lib.fileio import write_json
from stepsearch_lib.models import compute_autocast, token_logprobs
from stepsearch_lib.overrides import apply_overrides
from stepsearch_lib.train import build_models, set_activation_checkpointing

RESULTS = PROJECT_ROOT / "bench" / "results"
LENGTHS = (1233, 1100, 1000, 950, 900, 850, 800, 700)
"""Sequence lengths of the 8 rows (the longest is the real batch of bench/results/fast_rl.json)."""
PROMPT = 300


def synthetic_batch(seed: int = 0) -> PPOBatch:
    g = torch.Generator().manual_seed(seed)
    n, width = len(LENGTHS), max(LENGTHS)
    ids = torch.randint(100, 40000, (n, width), generator=g)
    attn = torch.zeros(n, width, dtype=torch.long)
    act = torch.zeros(n, width)
    for b, length in enumerate(LENGTHS):
        attn[b, :length] = 1
        act[b, PROMPT:length] = 1
    rewards = torch.zeros(n, width)
    rewards[:, 600] = 0.5
    return PPOBatch(ids, attn, act, rewards, [PROMPT] * n, act.clone(), None)


def run() -> dict:
    if torch.get_num_threads() < (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count())
    cfg = apply_overrides(get_config("cpu"), {"train.init_adapter": ""})
    actor, critic, _tok, opt_a, opt_c = build_models(cfg)
    set_activation_checkpointing([actor, critic.backbone], False)
    batch = synthetic_batch()
    snapshot = [{k: v.clone() for k, v in m.state_dict().items()} for m in (actor, critic)]

    def restore():
        for m, state in zip((actor, critic), snapshot):
            m.load_state_dict(state)
        opt_a.state.clear()
        opt_c.state.clear()

    phases = {}
    with compute_autocast("bfloat16"):
        t0 = time.perf_counter()
        with torch.no_grad():
            critic(batch.input_ids, batch.attention_mask)
        phases["no_grad_pass_8_rows_full_width_s"] = time.perf_counter() - t0
        mb = batch.select([0, 1], trim=True)
        actor.train()
        t0 = time.perf_counter()
        logp, ent = token_logprobs(actor, mb.input_ids, mb.attention_mask, mb.action_mask, with_entropy=True)
        phases["actor_forward_mb2_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        (logp.sum() + ent.sum()).backward()
        phases["actor_backward_mb2_s"] = time.perf_counter() - t0
        with critic.active():
            t0 = time.perf_counter()
            values = critic(mb.input_ids, mb.attention_mask)
            phases["critic_forward_mb2_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            values.sum().backward()
            phases["critic_backward_mb2_s"] = time.perf_counter() - t0
    opt_a.zero_grad()
    opt_c.zero_grad()

    select = PPOBatch.select
    seconds: dict[str, list[float]] = {"untrimmed": [], "trimmed": []}
    losses = {}
    try:
        for name in ("untrimmed", "trimmed") * 2:
            restore()
            untrimmed = name == "untrimmed"
            PPOBatch.select = (lambda self, idx, trim=False: select(self, idx, False)) if untrimmed else select
            steppo.NO_GRAD_CHUNK = len(batch) if untrimmed else 4
            t0 = time.perf_counter()
            with compute_autocast("bfloat16"):
                out = steppo.steppo_update(actor, critic, opt_a, opt_c, batch, cfg.ppo)
            seconds[name].append(time.perf_counter() - t0)
            losses[name] = {k: out[k] for k in ("losses/policy", "losses/value", "losses/entropy")}
    finally:
        PPOBatch.select = select
        steppo.NO_GRAD_CHUNK = 4

    # the floor: matmul FLOPs of the update at the measured GEMM rate (attention and the LM head's vocabulary
    # softmax excluded, so the true floor is higher). Per real token: no-grad passes 2N each (values, reference),
    # actor and critic forward 2N + backward 2N (the base is frozen: input gradients only; LoRA's are negligible).
    n_body = sum(p.numel() for n, p in actor.named_parameters() if "lora_" not in n and "embed_tokens" not in n)
    n_head = actor.get_output_embeddings().weight.numel()
    tokens = sum(LENGTHS)
    flops = tokens * (2 * (2 * n_body) + 4 * n_body + 4 * n_body) + tokens * (2 * n_head + 4 * n_head)
    rate = gemm_gflops()
    result = {
        "torch_threads": torch.get_num_threads(),
        "lengths": list(LENGTHS),
        "real_tokens": tokens,
        "padded_tokens": len(LENGTHS) * max(LENGTHS),
        "phases": phases,
        "update_seconds": seconds,
        "trim_speedup": min(seconds["untrimmed"]) / min(seconds["trimmed"]),
        "losses": losses,
        "gemm_bf16_gflops": rate,
        "matmul_tflop": flops / 1e12,
        "matmul_floor_s": flops / (rate * 1e9),
        "fraction_of_floor": flops / (rate * 1e9) / min(seconds["trimmed"]),
    }
    write_json(RESULTS / "update_profile.json", result)
    print(f"[bench] update_profile: {RESULTS / 'update_profile.json'}")
    return result


if __name__ == "__main__":
    print(run())
