"""The RL training loop: rollout -> rewards -> StePPO / PPO / GRPO update -> metrics, checkpoints.

    python -m stepsearch_lib.train --profile smoke --algo steppo|ppo|grpo [--reward-config NAME] [--steps N]
        [--seed S] [--run-name NAME] [--stop-after K] [--no-resume] [--set SECTION.FIELD=VALUE ...]

* ``steppo``: token-level rewards (step rewards on each ``</search>`` + final reward), critic, GAE.
* ``ppo``: the same update with the final reward only (Search-R1 style global reward).
* ``grpo``: ``train.grpo_group_size`` samples per question, group-relative outcome advantages,
  no critic -- implemented in this loop, because TRL's GRPOTrainer cannot carry our forced
  information tokens and per-step masks through its multi-turn hooks without re-implementing
  the rollout inside them.

Each run lives in ``checkpoints/<algo>-<reward>-s<seed>[-<run name>]/`` with its metrics in
``metrics/<same name>.jsonl``. Each step's randomness (question sample, sampling, dropout) is derived
from (seed, step), so a run resumed from the checkpoint after step k reproduces step k + 1 of an
uninterrupted run. A resume compares every setting that affects training (`training_settings`)
and refuses, naming the fields, when one differs; ``--stop-after K`` trains a run in pieces.
A NaN or inf loss stops the run; the last checkpoint stays the last good one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import build_batch
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .cli import UsageError, add_config_args, config_from_args, door, stage_command
from .critic import ValueModel, add_critic_adapter
from .fileio import peak_rss_mb, require
from .models import LoraSpec, compute_autocast, policy_from_config, resolved_compute_dtype
from .overrides import apply_overrides
from .parallel import World, assert_replicas_equal, barrier, init_world, mean_over_processes
from .retrieval import profile_retriever
from .rewards import gold_of, score_trajectory
from .rollout import rollout_from_config
from .sft import init_adapter_path
from .steppo import (
    grpo_update,
    params_of,
    set_lr,
    steppo_update,
    warmup_factor,
)
from .stepsearch_format import read_stepsearch

ALGOS = ("steppo", "ppo", "grpo")
"""Algorithms of the training entry point."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; the run stopped and kept its last good checkpoint."""


def run_name(algo: str, reward_name: str, seed: int = 0, tag: str = "") -> str:
    """``<algo>-<reward>-s<seed>`` plus ``-<tag>`` (a user's ``--run-name``): runs never share a folder.

    >>> run_name("steppo", "full", 2), run_name("ppo", "global_only", 0, "lr5e-5")
    ('steppo-full-s2', 'ppo-global_only-s0-lr5e-5')
    """
    if tag and not all(c.isalnum() or c in "._" for c in tag.replace("-", "")):
        raise ValueError(f"run name {tag!r}: use letters, digits, '.', '_' and '-' only")
    return f"{algo}-{reward_name}-s{seed}" + (f"-{tag}" if tag else "")


SETTINGS_SECTIONS = ("model", "retrieval", "rollout", "reward", "ppo", "train")
"""Config sections whose every field affects training (less `NOT_TRAINING`)."""

NOT_TRAINING = {"model.cache_dir", "train.save_every", "train.sft_eval_questions"}
"""Fields that change where or how often things are written, not what is learned."""


def training_settings(cfg, warm_start: Path | None = None) -> dict:
    """Every setting a checkpoint must share with a run that resumes it: each field of the training
    sections (flat ``section.field`` keys), the profile, the seed and the warm start's folder."""
    settings = {
        "profile": cfg.profile,
        "seed": cfg.seed,
        "warm_start": None if warm_start is None else _relative(Path(warm_start), cfg.run_dir),
    }
    for section in SETTINGS_SECTIONS:
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            if f"{section}.{key}" not in NOT_TRAINING:
                settings[f"{section}.{key}"] = value
    return json.loads(json.dumps(settings))  # tuples -> lists, as they come back from state.json


def settings_diff(saved: dict, now: dict) -> list[str]:
    """``field (checkpoint X, now Y)`` for every setting that differs."""
    return [
        f"{k} (checkpoint {saved.get(k, '<absent>')!r}, now {now.get(k, '<absent>')!r})"
        for k in sorted(set(saved) | set(now))
        if saved.get(k) != now.get(k)
    ]


def _relative(path: Path, root: Path) -> str:
    path, root = path.resolve(), root.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def build_models(cfg):
    """Actor (profile policy + LoRA, or the warm-start adapter), critic (``model.critic``), optimizers.

    ``model.critic == "shared"``: a second LoRA adapter on the actor's backbone + value head;
    ``"separate"``: a second copy of the policy architecture (same base weights) with its own
    fresh LoRA; any other value is a model name for a separate critic backbone.
    """
    actor, tok = policy_from_config(cfg, adapter=init_adapter_path(cfg))
    if cfg.model.critic == "shared":
        add_critic_adapter(actor, LoraSpec.from_config(cfg.model), seed=cfg.seed + 1)
        critic = ValueModel(actor, adapter="critic")
        lms = [actor]
    else:
        critic_cfg = (
            cfg if cfg.model.critic == "separate" else replace(cfg, model=replace(cfg.model, policy=cfg.model.critic))
        )
        critic_lm, _ = policy_from_config(critic_cfg, seed=cfg.seed + 1)  # own fresh LoRA adapter, a value head
        critic = ValueModel(critic_lm)
        lms = [actor, critic_lm]
    if cfg.train.gradient_checkpointing:
        for lm in lms:
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    actor_params = [p for n, p in actor.named_parameters() if p.requires_grad and ".critic." not in n]
    opt_a = torch.optim.AdamW(actor_params, lr=cfg.ppo.actor_lr)
    opt_c = torch.optim.AdamW(critic.trainable_parameters(), lr=cfg.ppo.critic_lr)
    return actor, critic, tok, opt_a, opt_c


def _step_questions(records: list[dict], n: int, seed: int, step: int) -> list[dict]:
    rng = np.random.default_rng([seed, step])
    return [records[i] for i in rng.choice(len(records), size=min(n, len(records)), replace=False)]


SEED_STRIDE = 100_003
"""Step seed = seed * SEED_STRIDE + step + RANK_STRIDE * rank: distinct streams per run, step and process (primes)."""
RANK_STRIDE = 7_919


class SettingsMismatchError(UsageError):
    """A run folder holds a checkpoint trained with other settings."""


def train(
    cfg,
    algo: str | None = None,
    reward_name: str | None = None,
    steps: int | None = None,
    records: list[dict] | None = None,
    retriever=None,
    resume: bool = True,
    world: World | None = None,
    tag: str = "",
    stop_after: int | None = None,
) -> Path:
    """Train, appending one JSON line of metrics per step to ``metrics/<run name>.jsonl``.

    ``algo``, ``reward_name``, ``steps`` (None: the config's) set ``train.algo``, ``reward.name`` and
    ``train.steps``; ``tag`` is the user's run name; ``stop_after`` stops after that many updates of the
    ``steps``-update run (resume later to go on). ``resume=False`` starts the run over, but never in a
    folder that holds a run with other settings. Under a data-parallel launcher (``world.size > 1``)
    every process rolls out its own ``train.questions_per_step`` questions; gradients are averaged before
    each optimizer step; metrics are averaged over processes; process 0 writes metrics and checkpoints.
    """

    # ---- 1. the run: its settings, its folder (a resume must be the same run), data, models, the step to start at
    world = world or World()
    algo = algo or cfg.train.algo
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    reward_name = reward_name or ("global_only" if algo == "ppo" else cfg.reward.name)
    cfg = apply_overrides(
        cfg,
        {
            "train.algo": algo,
            "reward.name": reward_name,
            "train.steps": steps if steps is not None else cfg.train.steps,
        },
    )
    steps, reward_cfg = cfg.train.steps, cfg.reward
    name = run_name(algo, reward_name, cfg.seed, tag)
    ckpt_dir, metrics_path = cfg.path("checkpoints", name), cfg.path("metrics", f"{name}.jsonl")
    settings = training_settings(cfg, init_adapter_path(cfg))
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:  # the folder holds a run: it must be this one
        diff = settings_diff(json.loads((latest / "state.json").read_text()).get("settings") or {}, settings)
        if diff:
            raise SettingsMismatchError(
                f"{ckpt_dir} holds a run trained with other settings: {'; '.join(diff[:12])}"
                f"{' ...' if len(diff) > 12 else ''}. Give this run its own name (CLI: --run-name NAME) or delete "
                f"that folder and metrics/{name}.jsonl yourself."
            )
    records = (
        records
        if records is not None
        else read_stepsearch(require(cfg.path("data", "stepsearch_train.jsonl"), stage_command("construct", cfg)))
    )
    retriever = retriever if retriever is not None else profile_retriever(cfg)
    actor, critic, tok, opt_a, opt_c = build_models(cfg)
    start = 0
    if latest is not None and resume:
        start = load_checkpoint(latest, actor, critic, opt_a, opt_c)["step"]
    end = steps if stop_after is None else min(steps, stop_after)
    compute_dtype = resolved_compute_dtype(cfg.model)  # the update and the rollout share it
    if world.is_main:
        _truncate_metrics(metrics_path, start)
    group = cfg.train.grpo_group_size if algo == "grpo" else 1
    per_rank = cfg.train.questions_per_step
    for step in tqdm(range(start, end), desc=f"{name} steps", initial=start, total=steps, disable=not world.is_main):
        # ---- 2. sample this step's questions (a function of seed and step: a resumed run draws the same ones)
        t0 = time.perf_counter()
        chosen = _step_questions(records, per_rank * world.size, cfg.seed, step)[world.rank * per_rank :][:per_rank]
        chosen = [r for r in chosen for _ in range(group)]
        step_seed = cfg.seed * SEED_STRIDE + step + RANK_STRIDE * world.rank
        # ---- 3. roll out: multi-turn search episodes, sampled, with the sampler's log-probs kept for PPO
        trajs = rollout_from_config(actor, tok, [r["question"] for r in chosen], retriever, cfg, seed=step_seed)
        t_rollout = time.perf_counter() - t0
        # ---- 4. score: answer, search-key and per-search step rewards; PPO keeps only the final reward
        scored = [
            score_trajectory(t.response_text(tok), t.queries, t.step_docs, reward_cfg=reward_cfg, **gold_of(r))
            for t, r in zip(trajs, chosen)
        ]
        batch = build_batch(trajs, scored, tok.pad_token_id, use_step_rewards=algo == "steppo")
        # ---- 5. update: learning rates of this step, then StePPO / PPO (actor + critic) or GRPO
        # linear learning-rate warm-up (released: 28.5 % of the updates actor, 5 % critic), derived from the step
        lr_a = cfg.ppo.actor_lr * warmup_factor(step, steps, cfg.ppo.actor_warmup_frac)
        lr_c = cfg.ppo.critic_lr * warmup_factor(step, steps, cfg.ppo.critic_warmup_frac)
        set_lr(opt_a, lr_a)
        set_lr(opt_c, lr_c)
        set_activation_checkpointing(
            [actor, critic.backbone],
            cfg.train.gradient_checkpointing
            and (_minibatch_tokens(batch, cfg.ppo.minibatch_size) > cfg.train.checkpoint_above_tokens),
        )
        with torch.random.fork_rng(devices=[]), compute_autocast(compute_dtype, actor.device):
            torch.manual_seed(step_seed)
            if algo == "grpo":
                outcome = [s.final_reward + sum(s.step_rewards) for s in scored]
                losses = grpo_update(
                    actor,
                    opt_a,
                    batch,
                    [i // group for i in range(len(chosen))],
                    outcome,
                    cfg.ppo,
                    cfg.seed + step,
                    world,
                )
            else:
                losses = steppo_update(
                    actor,
                    critic,
                    opt_a,
                    opt_c,
                    batch,
                    cfg.ppo,
                    seed=cfg.seed + step,
                    world=world,
                    update_actor=step >= cfg.ppo.critic_warmup_updates,
                )
        # ---- 6. log one metrics line, stop on a non-finite loss, checkpoint every save_every steps and at the end
        row = mean_over_processes(
            {**_rollout_metrics(trajs, scored), **losses, "lr/actor": lr_a, "lr/critic": lr_c}, world
        )
        if not all(math.isfinite(v) for k, v in row.items() if k.startswith("losses/")):
            raise NonFiniteLossError(
                f"step {step + 1}: non-finite loss {losses}; stopped, kept {latest_checkpoint(ckpt_dir)}"
            )
        save_now = (step + 1) % cfg.train.save_every == 0 or step + 1 == end
        if save_now:
            assert_replicas_equal(params_of(opt_a) + params_of(opt_c), world)
        row = {
            "step": step + 1,
            **row,
            "time/rollout_s": t_rollout,
            "time/step_s": time.perf_counter() - t0,
            "time/activation_checkpointing": float(actor.is_activation_checkpointing),
            "time/processes": world.size,
            "time/torch_threads": torch.get_num_threads(),  # part of the numerics: sampling follows float rounding
            "memory/peak_rss_mb": peak_rss_mb(),
        }
        if world.is_main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if save_now:
                save_checkpoint(
                    ckpt_dir,
                    step + 1,
                    actor,
                    critic,
                    opt_a,
                    opt_c,
                    {"algo": algo, "reward": reward_name, "run": name, "settings": settings},
                )
        barrier(world)
    return metrics_path


def train_arms(
    cfg, arms: dict[str, str], steps: int | None = None, records: list[dict] | None = None, retriever=None
) -> dict[str, Path]:
    """{label: metrics JSONL} of one run per ``{label: algo}`` (each with its algorithm's default reward), in order."""
    return {label: train(cfg, algo, steps=steps, records=records, retriever=retriever) for label, algo in arms.items()}


def _minibatch_tokens(batch, minibatch_size: int) -> int:
    """Padded tokens of the largest minibatch an update will see (its activations are what checkpointing saves)."""
    return int(batch.input_ids.shape[1]) * min(minibatch_size, len(batch))


def set_activation_checkpointing(lms, on: bool) -> None:
    """Turn activation checkpointing on or off for each distinct model in ``lms``."""
    for lm in {id(m): m for m in lms}.values():
        if on and not lm.is_activation_checkpointing:
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif not on and lm.is_activation_checkpointing:
            lm.activation_checkpointing_disable()


def _truncate_metrics(path: Path, keep_steps: int) -> None:
    """Drop metric lines after the checkpoint being resumed (they will be recomputed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= keep_steps]
    path.write_text("".join(ln + "\n" for ln in lines))


def _rollout_metrics(trajs, scored) -> dict:
    returns = [s.final_reward + sum(s.step_rewards) for s in scored]
    return {
        "reward/answer_f1": float(np.mean([s.answer_f1 for s in scored])),  # F1 also when the gate fails
        "reward/answer": float(np.mean([s.answer_reward for s in scored])),  # the gated answer reward
        "reward/step_sum": float(np.mean([sum(s.step_rewards) for s in scored])),
        "rollout/return_std": float(np.std(returns)),  # 0: nothing in this batch tells episodes apart
        "reward/format_ok": float(np.mean([s.format_ok for s in scored])),
        "reward/search_key": float(np.mean([s.search_key for s in scored])),
        "reward/info_gain": float(np.mean([sum(s.info_gain) for s in scored])),
        "reward/redundancy": float(np.mean([sum(s.redundancy) for s in scored])),
        "reward/final": float(np.mean([s.final_reward for s in scored])),
        "rollout/num_searches": float(np.mean([t.num_searches for t in trajs])),
        "rollout/response_len": float(np.mean([len(t.response_ids) for t in trajs])),
    }


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Train a search agent with StePPO, PPO or GRPO (data parallel under `accelerate launch`).",
        epilog="example: stepsearch train --profile cpu --algo ppo --seed 1 --stop-after 20 --set ppo.actor_lr=5e-5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    ap.add_argument("--algo", choices=ALGOS, default=None, help="default: the config's train.algo (steppo)")
    ap.add_argument(
        "--reward-config",
        default=None,
        help="full, no_info_gain, no_redundancy, no_search_key, no_step, "
        "global_only (default: reward.name; global_only for ppo)",
    )
    ap.add_argument("--steps", type=int, default=None, help="updates of the run (train.steps)")
    ap.add_argument("--stop-after", type=int, default=None, metavar="K", help="stop after update K (resume later)")
    ap.add_argument("--run-name", default="", help="added to the run folder's name: <algo>-<reward>-s<seed>-NAME")
    ap.add_argument("--no-resume", action="store_true", help="start this run over (never another run's folder)")
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    world = init_world(cpu=not torch.cuda.is_available())
    path = train(
        cfg,
        args.algo,
        args.reward_config,
        args.steps,
        resume=not args.no_resume,
        world=world,
        tag=args.run_name,
        stop_after=args.stop_after,
    )
    if world.is_main:
        print(f"metrics: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
