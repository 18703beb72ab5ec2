"""The profile's evaluation matrix: every method x every evaluation dataset, into one results table.

Rows (``model`` column): the untrained policy with ``naive``, ``rag`` and ``agent``; then the
``agent`` method for every checkpoint that exists -- the SFT warm start and each training run
under ``checkpoints/`` (StePPO, PPO, GRPO, the ablations). A method x dataset whose results
already exist (same question count) is read back instead of recomputed, so a re-run is cheap.

    runs/<profile>/eval/<label>/<dataset>/{predictions.jsonl, results.csv}
    runs/<profile>/eval/results.csv
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .evaluate import RESULT_FIELDS, evaluate, load_model_for_eval
from .fileio import iter_json_records, read_csv, write_csv
from .profile_data import load_eval_sets
from .retrieval import profile_retriever
from .sft import warm_start_dir

RUN_LABELS = {
    "steppo-full": "StePPO",
    "ppo-global_only": "PPO",
    "grpo-full": "GRPO",
    "steppo-no_info_gain": "StePPO w/o IG",
    "steppo-no_redundancy": "StePPO w/o RP",
    "steppo-no_search_key": "StePPO w/o key",
    "steppo-no_step": "StePPO w/o step rewards",
}
"""Display names of training runs by ``<algo>-<reward>`` (the run folder is ``<algo>-<reward>-s<seed>[-<name>]``)."""

_RUN_FOLDER = re.compile(r"^(?P<base>[a-z]+-[a-z_]+)-s(?P<seed>\d+)(?:-(?P<tag>.+))?$")


def training_runs(cfg) -> dict[str, str]:
    """{display label: run folder name} of every training run with a checkpoint, in `RUN_LABELS` order.
    A run of this config's seed without a name gets the plain label ("StePPO"); others say which."""
    found = []
    for folder in sorted(cfg.path("checkpoints").glob("*/latest")):
        m = _RUN_FOLDER.match(folder.parent.name)
        if not m or m["base"] not in RUN_LABELS:
            continue
        plain = int(m["seed"]) == cfg.seed and not m["tag"]
        label = RUN_LABELS[m["base"]] + ("" if plain else f" (s{m['seed']}{' ' + m['tag'] if m['tag'] else ''})")
        found.append((list(RUN_LABELS).index(m["base"]), label, folder.parent.name))
    return {label: name for _, label, name in sorted(found)}


def training_metrics(cfg) -> dict[str, Path]:
    """{display label: metrics JSONL} of every training run with metrics."""
    return {
        label: cfg.path("metrics", f"{name}.jsonl")
        for label, name in training_runs(cfg).items()
        if cfg.path("metrics", f"{name}.jsonl").is_file()
    }


@dataclass(frozen=True)
class Entry:
    label: str
    """Row name in the results table."""
    method: str
    """naive, rag or agent."""
    model: str
    """Policy name or checkpoint folder handed to `load_model_for_eval`."""


def evaluation_plan(cfg) -> list[Entry]:
    """The baselines, then the agent for every checkpoint that exists."""
    base = cfg.model.policy
    names = {"naive": "naive generation", "rag": "single-shot RAG", "agent": "search agent (untrained)"}
    unknown = set(cfg.eval.methods) - set(names)
    if unknown:
        raise ValueError(f"eval.methods: unknown {sorted(unknown)}; choose from {sorted(names)}")
    plan = [Entry(names[m], m, base) for m in cfg.eval.methods]
    mine = warm_start_dir(cfg).name
    for adapter in sorted(cfg.path("checkpoints").glob("sft-*/adapter_config.json")):
        name = adapter.parent.name
        plan.append(
            Entry(
                "SFT warm start" if name == mine else f"SFT warm start ({name})",
                "agent",
                f"{RUN_PREFIX}checkpoints/{name}",
            )
        )
    for label, name in training_runs(cfg).items():
        plan.append(Entry(label, "agent", f"{RUN_PREFIX}checkpoints/{name}"))
    return plan


RUN_PREFIX = "<run>/"
"""Checkpoints of the plan are named relative to the run folder (``<run>/checkpoints/steppo-full-s0``): results
read the same wherever the run folder lives, and two runs can be compared."""


def resolve_model(model: str, cfg) -> str:
    """A plan's model name as `load_model_for_eval` takes it (``<run>/...`` -> a path in the run folder)."""
    return str(cfg.run_dir / model[len(RUN_PREFIX) :]) if model.startswith(RUN_PREFIX) else model


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")


def run_evaluation(cfg, datasets: dict | None = None, retriever=None, plan: list[Entry] | None = None) -> Path:
    """Evaluate every plan entry on every dataset (reusing finished cells); returns the results CSV."""
    from tqdm.auto import tqdm

    if datasets is None:
        n = cfg.eval.questions_per_dataset
        datasets = {name: recs[:n] if n else recs for name, recs in load_eval_sets(cfg).items()}
    retriever = retriever if retriever is not None else profile_retriever(cfg)
    plan = plan if plan is not None else evaluation_plan(cfg)
    rows = []
    for entry in tqdm(plan, desc="evaluation", unit="method"):
        model = tok = None
        for name, records in datasets.items():
            out = cfg.path("eval", _slug(entry.label), name)
            done = out / "results.csv"
            if done.is_file() and int(read_csv(done)[0]["n"]) == len(records):
                row = read_csv(done)[0]
            else:
                if model is None:
                    model, tok = load_model_for_eval(resolve_model(entry.model, cfg), cfg)
                row = evaluate(entry.method, model, tok, records, retriever, cfg, out, entry.model, name)
            rows.append({**row, "label": entry.label})
    return write_csv(cfg.path("eval", "results.csv"), rows)


__all__ = ["Entry", "RESULT_FIELDS", "evaluation_plan", "resolve_model", "run_evaluation"]


def run_summaries(runs: dict[str, Path]) -> dict[str, dict]:
    """{label: first / last answer F1, last search-key score and searches, seconds per update, peak RSS} of each
    training run's metrics JSONL."""
    out = {}
    for label, path in runs.items():
        rows = list(iter_json_records(path))
        first, last = rows[0][1], rows[-1][1]
        out[label] = {
            "updates": len(rows),
            "F1 first": first["reward/answer_f1"],
            "F1 last": last["reward/answer_f1"],
            "search-key last": last["reward/search_key"],
            "searches last": last["rollout/num_searches"],
            "s / update": sum(r["time/step_s"] for _, r in rows) / len(rows),
            "rollout s / update": sum(r["time/rollout_s"] for _, r in rows) / len(rows),
            "peak RSS MB": max(r["memory/peak_rss_mb"] for _, r in rows),
        }
    return out


PAPER_SETTING = {
    "policy": "Qwen2.5-3B / 7B (base, instruct)",
    "retriever": "e5-base-v2 over wiki-18 (21M passages)",
    "training questions": "built from MuSiQue-Ans train (19,938 questions)",
    "updates": "~1,100 x batch 128 on 8 GPUs",
    "eval questions / dataset": "full dev / test sets",
}
"""How the paper's numbers were produced (for the side-by-side with this profile's run)."""


def setting_comparison(cfg, metrics: dict[str, Path], eval_questions: int) -> dict[str, dict[str, str]]:
    """{"paper": PAPER_SETTING, "ours": the same fields for this config's run}."""
    updates = {label: sum(1 for _ in iter_json_records(path)) for label, path in metrics.items()}
    train_file = cfg.path("data", "stepsearch_train.jsonl")
    n_train = sum(1 for _ in iter_json_records(train_file)) if train_file.is_file() else 0
    ours = {
        "policy": cfg.model.policy,
        "retriever": f"{cfg.retrieval.kind} ({cfg.model.encoder}) over the profile corpus",
        "training questions": f"{n_train:,}",
        "updates": ", ".join(f"{k}: {v} x {cfg.train.questions_per_step}" for k, v in updates.items()) or "none",
        "eval questions / dataset": str(eval_questions),
    }
    return {"paper": PAPER_SETTING, "ours": ours}
