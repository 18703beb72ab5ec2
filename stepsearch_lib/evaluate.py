"""Evaluation: EM / F1 of a method on a question file, per-question predictions, bootstrap intervals.

    python -m stepsearch_lib.evaluate --method naive|rag|agent --model NAME_OR_CHECKPOINT \\
        --dataset PATH --index DIR --out DIR [--limit N] [--profile cpu]

Methods (greedy decoding, the same retriever and top-k for every method):

* ``naive``: the question alone, answer from the model's own knowledge.
* ``rag``: top-k documents retrieved on the question, then one answer.
* ``agent``: the multi-turn search protocol (`rollout`), up to ``rollout.max_turns`` searches.

``--model`` is a policy name (``smollm2-135m-instruct``, a hub id, a local folder), a saved peft
adapter folder (the SFT warm start), or a training run folder / step folder
(``checkpoints/steppo-full``). Any question file in a supported format is accepted (MuSiQue,
HotpotQA, 2Wiki, FlashRAG jsonl or json), so new held-out sets need no code changes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint import latest_checkpoint, load_policy_weights
from .cli import add_config_args, config_from_args, door
from .config import check_choices
from .data import load_questions
from .decoding import Sampling
from .fileio import require, write_csv, write_jsonl
from .models import load_policy, policy_from_config
from .overrides import apply_overrides
from .protocol import DIRECT_PROMPT, RAG_PROMPT, chat_wrap, cut_words, extract_answer, render_docs
from .retrieval import retriever_from_dirs
from .rewards import best_em, best_f1
from .rollout import hf_generate_turn, rollout_from_config
from .sft import init_adapter_path

METHODS = ("naive", "rag", "agent")
"""Evaluation methods."""

RESULT_FIELDS = ("method", "model", "dataset", "n", "em", "em_lo", "em_hi", "f1", "f1_lo", "f1_hi", "searches")
"""Columns of a results CSV."""


def bootstrap_ci(
    values: Sequence[float], n_samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of ``values``.

    >>> bootstrap_ci([1.0, 1.0, 1.0], n_samples=50)
    (1.0, 1.0, 1.0)
    >>> m, lo, hi = bootstrap_ci([0.0, 1.0] * 50, n_samples=500)
    >>> m, lo < 0.5 < hi
    (0.5, True)
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_samples, x.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi)


def parse_answer(text: str) -> str:
    """The answer of a single-shot generation: the ``<answer>`` block, else the first non-empty line."""
    found = extract_answer(text)
    if found is not None:
        return found
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def single_shot_prompts(
    method: str, questions: Sequence[str], tokenizer, retriever=None, topk: int = 3, doc_words: int = 0
) -> list[str]:
    """Prompts of the ``naive`` and ``rag`` baselines (``rag`` retrieves on the question, batched)."""
    if method == "naive":
        return [chat_wrap(DIRECT_PROMPT.format(question=q.strip()), tokenizer) for q in questions]
    if method != "rag":
        raise ValueError(f"single-shot method must be naive or rag, got {method!r}")
    if retriever is None:
        raise ValueError("the rag baseline needs a retriever")
    hits = retriever.batch_search(list(questions), topk)
    return [
        chat_wrap(
            RAG_PROMPT.format(
                question=q.strip(),
                docs=render_docs([(h.passage.title, cut_words(h.passage.text, doc_words)) for h in hs]),
            ),
            tokenizer,
        )
        for q, hs in zip(questions, hits)
    ]


def predict(method: str, model, tokenizer, records, retriever, cfg) -> list[dict]:
    """Per question: prediction, gold answers, searches issued (greedy decoding)."""
    from tqdm.auto import tqdm

    questions = [r.question for r in records]
    if method == "agent":
        trajs = rollout_from_config(model, tokenizer, questions, retriever, cfg, greedy=True)
        outs = [(t.answer or "", t.num_searches) for t in trajs]
    elif method in ("naive", "rag"):
        prompts = single_shot_prompts(
            method, questions, tokenizer, retriever, cfg.retrieval.topk, cfg.rollout.doc_words
        )
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        size = cfg.rollout.batch_size
        texts: list[str] = []
        model.eval()
        for start in tqdm(range(0, len(ids), size), desc=method, unit="batch", leave=False, disable=len(ids) <= size):
            turns = hf_generate_turn(
                model,
                tokenizer,
                ids[start : start + size],
                Sampling(greedy=True, max_new_tokens=cfg.rollout.max_new_tokens),
            )
            texts += [tokenizer.decode(t, skip_special_tokens=True) for t in turns]
        outs = [(parse_answer(t), int(method == "rag")) for t in texts]
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return [
        {
            "id": r.id,
            "dataset": r.dataset,
            "question": r.question,
            "prediction": pred,
            "golds": list(r.answers),
            "searches": searches,
            "em": best_em(pred, r.answers),
            "f1": best_f1(pred, r.answers),
        }
        for r, (pred, searches) in zip(records, outs)
    ]


def summarize(
    rows: Sequence[dict], method: str, model: str, dataset: str, n_samples: int = 1000, seed: int = 0
) -> dict:
    """One results row: EM and F1 with 95 % bootstrap intervals, mean searches."""
    em, em_lo, em_hi = bootstrap_ci([r["em"] for r in rows], n_samples, seed)
    f1, f1_lo, f1_hi = bootstrap_ci([r["f1"] for r in rows], n_samples, seed)
    return {
        "method": method,
        "model": model,
        "dataset": dataset,
        "n": len(rows),
        "em": em,
        "em_lo": em_lo,
        "em_hi": em_hi,
        "f1": f1,
        "f1_lo": f1_lo,
        "f1_hi": f1_hi,
        "searches": float(np.mean([r["searches"] for r in rows])),
    }


def evaluate(
    method: str, model, tokenizer, records, retriever, cfg, out_dir: Path | str, model_name: str, dataset: str
) -> dict:
    """Predict, score, write ``predictions.jsonl`` and ``results.csv`` (one row) into ``out_dir``."""
    if not records:
        raise ValueError(f"no questions to evaluate for {dataset}")
    rows = predict(method, model, tokenizer, records, retriever, cfg)
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "predictions.jsonl", rows)
    summary = summarize(rows, method, model_name, dataset, cfg.eval.bootstrap_samples, cfg.seed)
    write_csv(out_dir / "results.csv", [summary])
    return summary


def run_config(step_dir: Path, cfg):
    """The config a training checkpoint was trained with: every recorded setting over ``cfg``, and the warm
    start it was trained from (its recorded folder, whatever this config's seed or settings would pick)."""
    settings = json.loads((Path(step_dir) / "state.json").read_text()).get("settings") or {}
    if "model.policy" not in settings:
        raise ValueError(
            f"{step_dir} was saved by an older version of the workbench (no recorded settings); "
            f"retrain it with `python -m stepsearch_lib.train`"
        )
    run_dir = Path(step_dir).resolve().parent.parent.parent  # <run>/checkpoints/<name>/step-N
    overrides = {k: v for k, v in settings.items() if "." in k}
    warm = settings.get("warm_start")
    overrides["train.init_adapter"] = (
        "" if warm is None else str(run_dir / warm if not Path(warm).is_absolute() else warm)
    )
    run_cfg = apply_overrides(cfg, {**overrides, "seed": settings["seed"]})
    check_choices(run_cfg)
    return run_cfg


def load_model_for_eval(name_or_checkpoint: str, cfg):
    """(model, tokenizer) for a policy name, a saved peft adapter, or a training checkpoint."""
    path = Path(name_or_checkpoint).expanduser()
    if (path / "adapter_config.json").is_file():  # a peft adapter (the SFT warm start) on the profile's policy
        model, tok = policy_from_config(cfg, adapter=path)
    elif (path / "latest").is_file() or (path / "state.json").is_file():  # a training run or one of its steps
        step = path if (path / "state.json").is_file() else latest_checkpoint(path)
        run_cfg = run_config(step, cfg)  # the policy as trained: its settings and warm start, then its weights
        model, tok = policy_from_config(run_cfg, adapter=init_adapter_path(run_cfg))
        load_policy_weights(step, model)
    else:
        model, tok = load_policy(replace(cfg.model, policy=name_or_checkpoint), seed=cfg.seed)
    model.eval()
    return model, tok


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Score a method on a question file (EM / F1 with bootstrap intervals).",
        epilog="example: stepsearch evaluate --method agent --model runs/cpu/checkpoints/steppo-full-s0 "
        "--dataset ../shared/data/bamboogle/test.jsonl --index runs/cpu/index/dense --out runs/cpu/eval/x",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    ap.add_argument("--method", choices=METHODS, required=True)
    ap.add_argument("--model", required=True, help="policy name, peft adapter folder, or training checkpoint folder")
    ap.add_argument("--dataset", required=True, help="question file in any supported format")
    ap.add_argument("--index", action="append", default=[], help="index folder (twice: hybrid); not needed for naive")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = config_from_args(args)  # the profile gives generation / retrieval settings (rollout.*, retrieval.topk)
    if args.method != "naive" and not args.index:
        ap.error(f"--method {args.method} needs --index")
    retriever = retriever_from_dirs([Path(d) for d in args.index], cfg.retrieval.rrf_k) if args.index else None
    records = load_questions(require(args.dataset, "`make data` (the profile's question files)"), limit=args.limit)
    model, tok = load_model_for_eval(args.model, cfg)
    summary = evaluate(
        args.method,
        model,
        tok,
        records,
        retriever,
        cfg,
        args.out,
        args.model,
        records[0].dataset if records else Path(args.dataset).stem,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
