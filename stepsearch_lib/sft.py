"""The SFT warm start: teach the policy the search protocol before RL, with TRL's SFTTrainer.

Rows are pre-tokenised demonstrations (`demonstrations.build_demonstrations`) with a
``completion_mask`` that is 0 on the prompt and on the forced information blocks, trained with
``completion_only_loss=True`` so only the model's own turns are learned. The adapter is saved
with peft (safetensors) into ``runs/<profile>/checkpoints/sft-s<seed>-<digest>/``, one folder per
set of warm-start settings (`warm_start_settings`, the seed included): a second seed or another
learning rate never overwrites a warm start that RL runs were trained from.

    python -m stepsearch_lib.sft --profile cpu [--seed 1] [--set train.sft_lr=1e-4]

`warm_start` also rolls out held-out dev questions greedily before and after training and
writes the format / search rates to ``metrics/sft-s<seed>-<digest>.json`` (the bar: >= 90 % each).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

from .cli import add_config_args, config_from_args, door, stage_command
from .demonstrations import build_demonstrations
from .fileio import MissingInputError, atomic_path, require, write_json
from .models import policy_from_config
from .retrieval import profile_retriever
from .rewards import gold_of, score_trajectory
from .rollout import rollout_from_config
from .stepsearch_format import read_stepsearch


def sft_train(
    model,
    tokenizer,
    rows: Sequence[dict],
    out_dir: Path | str,
    lr: float = 5e-4,
    epochs: float = 1.0,
    batch_size: int = 4,
    seed: int = 0,
) -> dict:
    """Train ``model`` (a peft LoRA model) on demonstration rows; save the adapter to ``out_dir``."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("no demonstration rows to train on")
    ds = datasets.Dataset.from_list(
        [{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]} for r in rows]
    )
    out_dir = Path(out_dir)
    with atomic_path(out_dir, is_dir=True) as tmp:
        args = SFTConfig(
            output_dir=str(tmp / "trainer"),
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            learning_rate=lr,
            completion_only_loss=True,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            max_length=None,
            seed=seed,
            use_cpu=not _cuda(),
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
        result = trainer.train()
        model.save_pretrained(str(tmp))
        import shutil

        shutil.rmtree(tmp / "trainer", ignore_errors=True)
    return {"train_loss": result.training_loss, "steps": result.global_step, "adapter": str(out_dir)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def protocol_rates(trajectories, scored=None) -> dict:
    """Share of rollouts that pass the format gate and that issue at least one search. With the
    rollouts' reward records (``scored``) the gate is the reward's own (`TrajectoryRewards.format_ok`);
    without, a rollout passes when it produced an answer block."""
    n = max(1, len(trajectories))
    passed = [s.format_ok for s in scored] if scored is not None else [t.answer is not None for t in trajectories]
    return {"format_ok": sum(passed) / n, "searched": sum(t.num_searches > 0 for t in trajectories) / n}


def protocol_check(model, tokenizer, records: Sequence[dict], retriever, cfg) -> dict:
    """Greedy rollouts on ``records``: format-gate pass rate (the reward's gate), search rate, F1."""

    trajs = rollout_from_config(model, tokenizer, [r["question"] for r in records], retriever, cfg, greedy=True)
    scored = [
        score_trajectory(t.response_text(tokenizer), t.queries, t.step_docs, reward_cfg=cfg.reward, **gold_of(r))
        for t, r in zip(trajs, records)
    ]
    n = max(1, len(trajs))
    return {
        "questions": len(trajs),
        **protocol_rates(trajs, scored),
        "searches_per_question": sum(t.num_searches for t in trajs) / n,
        "answer_f1": sum(s.answer_f1 for s in scored) / n,
        "search_key": sum(s.search_key for s in scored) / n,
        "examples": [t.response_text(tokenizer) for t in trajs[:2]],
    }


def warm_start(
    cfg, records: Sequence[dict] | None = None, dev_records: Sequence[dict] | None = None, retriever=None
) -> dict:
    """Build demonstrations from the profile's constructed training data, train the SFT warm start,
    check the protocol rates on held-out dev records before and after; returns (and writes) a report."""

    t = cfg.train
    records = (
        records
        if records is not None
        else read_stepsearch(require(cfg.path("data", "stepsearch_train.jsonl"), stage_command("construct", cfg)))
    )
    dev_records = (
        dev_records
        if dev_records is not None
        else read_stepsearch(require(cfg.path("data", "stepsearch_dev.jsonl"), stage_command("construct", cfg)))
    )
    dev_records = list(dev_records)[: t.sft_eval_questions]
    retriever = retriever if retriever is not None else profile_retriever(cfg)
    model, tok = policy_from_config(cfg)
    # the untrained policy's check does not depend on the demonstrations: warm starts that differ only in their
    # SFT settings (gold vs question queries, lr, ...) share it (half an hour of rollouts on the cpu profile)
    before_path = base_check_path(cfg)
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        t0 = time.perf_counter()
        before = {**protocol_check(model, tok, dev_records, retriever, cfg), "check_s": time.perf_counter() - t0}
        write_json(before_path, before)
    t_check = before["check_s"]
    rows = build_demonstrations(
        records,
        retriever,
        tok,
        n=t.sft_examples,
        topk=cfg.retrieval.topk,
        doc_words=cfg.rollout.doc_words,
        template=cfg.rollout.template,
        seed=cfg.seed,
        doc_render=cfg.rollout.doc_render,
        queries=t.sft_queries,
    )
    t0 = time.perf_counter()
    info = sft_train(
        model,
        tok,
        rows,
        warm_start_dir(cfg),
        lr=t.sft_lr,
        epochs=t.sft_epochs,
        batch_size=t.sft_batch_size,
        seed=cfg.seed,
    )
    t_train = time.perf_counter() - t0
    after = protocol_check(model, tok, dev_records, retriever, cfg)
    report = {
        "profile": cfg.profile,
        "settings": warm_start_settings(cfg),
        "demonstrations": len(rows),
        "mean_demo_tokens": sum(len(r["input_ids"]) for r in rows) / len(rows),
        "train_loss": info["train_loss"],
        "optimizer_steps": info["steps"],
        "train_s": t_train,
        "check_s": t_check,
        "adapter": info["adapter"],
        "before": before,
        "after": after,
    }
    write_json(warm_start_report_path(cfg), report)
    return report


def warm_start_settings(cfg) -> dict:
    """Everything a warm start depends on; a saved one is reused only when these match."""
    m, t = cfg.model, cfg.train
    return {
        "policy": m.policy,
        "load_in_4bit": m.load_in_4bit,
        "lora": [m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target],
        "examples": t.sft_examples,
        "lr": t.sft_lr,
        "epochs": t.sft_epochs,
        "batch_size": t.sft_batch_size,
        "eval_questions": t.sft_eval_questions,
        "seed": cfg.seed,
        "retrieval": [cfg.retrieval.kind, cfg.retrieval.topk],
        "doc_words": cfg.rollout.doc_words,
        "template": cfg.rollout.template,
        "doc_render": cfg.rollout.doc_render,
        **({"queries": t.sft_queries} if t.sft_queries != "gold" else {}),
    }


SFT_ONLY = ("examples", "lr", "epochs", "batch_size", "queries")
"""`warm_start_settings` keys the untrained policy's protocol check does not depend on."""


def base_check_path(cfg) -> Path:
    """The untrained policy's protocol check for these settings: ``metrics/base-check-<digest>.json``."""
    key = {k: v for k, v in warm_start_settings(cfg).items() if k not in SFT_ONLY}
    key["rollout"] = [cfg.rollout.max_turns, cfg.rollout.max_new_tokens, cfg.rollout.turn_logic, cfg.rollout.engine]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return cfg.path("metrics", f"base-check-{digest}.json")


def warm_start_dir(cfg) -> Path:
    """The warm start of these settings: ``checkpoints/sft-s<seed>-<first 8 hex of their SHA-256>``."""
    digest = hashlib.sha256(json.dumps(warm_start_settings(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return cfg.path("checkpoints", f"sft-s{cfg.seed}-{digest}")


def warm_start_report_path(cfg) -> Path:
    return cfg.path("metrics", f"{warm_start_dir(cfg).name}.json")


def warm_start_report(cfg) -> dict | None:
    """The saved report (rates before / after) of this config's warm start, or None before one is trained."""
    path = warm_start_report_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else None


def init_adapter_path(cfg) -> Path | None:
    """The adapter RL starts from (``train.init_adapter``): None, this config's SFT warm start, or a path."""
    name = cfg.train.init_adapter
    if cfg.train.init_adapter_mode not in ("merge", "continue"):
        raise ValueError(f"train.init_adapter_mode must be 'merge' or 'continue', got {cfg.train.init_adapter_mode!r}")
    if not name:
        return None
    path = warm_start_dir(cfg) if name == "sft" else Path(name).expanduser()
    if not (path / "adapter_config.json").is_file():
        hint = f"; `{stage_command('sft', cfg)}` (with the same --set options) makes it" if name == "sft" else ""
        raise MissingInputError(f"train.init_adapter={name!r}: no saved adapter at {path}{hint}")
    return path


def ensure_warm_start(cfg) -> dict:
    """This config's warm-start report, training it first unless a saved adapter with the same settings exists."""
    report_path, adapter = warm_start_report_path(cfg), warm_start_dir(cfg)
    if report_path.is_file() and (adapter / "adapter_config.json").is_file():
        report = json.loads(report_path.read_text())
        if report.get("settings") == warm_start_settings(cfg):
            return report
    return warm_start(cfg)


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="SFT warm start: teach the policy the search protocol.",
        epilog="example: stepsearch sft --profile cpu --seed 1 --set train.sft_lr=1e-4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    report = warm_start(config_from_args(ap.parse_args(argv)))
    for when in ("before", "after"):
        r = report[when]
        print(f"{when}: format_ok {r['format_ok']:.2f}  searched {r['searched']:.2f}  F1 {r['answer_f1']:.3f}")
    print(f"adapter: {report['adapter']}  ({report['train_s']:.0f} s training)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
