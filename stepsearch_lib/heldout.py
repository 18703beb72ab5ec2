"""Held-out evaluation of the cpu study: per-question agent metrics and paired bootstrap comparisons.

Questions never used for construction or training: the profile's dev subsets (MuSiQue, HotpotQA, 2Wiki; the
first ``per_dataset`` each) and every Bamboogle question. Each is answered greedily by the search agent and
scored with the reward code itself against gold taken from the official files: the answer and its aliases,
the gold sub-questions as gold queries (MuSiQue's decomposition with earlier answers substituted, 2Wiki's
``qa_pairs``-based sub-questions; none for HotpotQA and Bamboogle), and the supporting paragraphs as gold
documents.

Per question: EM, F1, format gate, searches, search-key score (released mode; NaN without gold queries),
gold-paragraph recall of every retrieved document (NaN without gold paragraphs), summed information gain.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .data import Passage, QuestionRecord, gold_and_sub_paragraphs, load_questions, passage_key
from .decompose import resolved_sub_questions
from .rewards import score_trajectory
from .rollout import rollout_from_config

METRICS = ("em", "f1", "format_ok", "searches", "search_key", "gold_recall", "info_gain_sum")
"""Per-question metrics of a held-out evaluation, in report order."""


def heldout_sets(cfg, per_dataset: int = 100) -> dict[str, list[QuestionRecord]]:
    """The study's held-out questions: the first ``per_dataset`` of each dev subset, all of Bamboogle."""
    return {
        name: load_questions(cfg.data_file(rel), dataset=name, limit=0 if name == "bamboogle" else per_dataset)
        for name, rel in cfg.data.eval_files
    }


def heldout_gold(rec: QuestionRecord, corpus_ids: Mapping[tuple[str, str], str]) -> dict:
    """Gold of a held-out question in the reward's terms, plus the corpus ids of its gold paragraphs."""
    paragraphs = gold_and_sub_paragraphs(rec)
    subs = resolved_sub_questions(rec) if rec.dataset == "musique" else rec.sub_questions
    return {
        "answers": rec.answers,
        "gold_keys": [[s.question] for s in subs if s.question],
        "gold_docs": [p.text for p in paragraphs],
        "gold_ids": [corpus_ids[k] for k in (passage_key(p.title, p.text) for p in paragraphs) if k in corpus_ids],
    }


def question_rows(trajectories, records: Sequence[QuestionRecord], tokenizer, corpus_ids, reward_cfg) -> list[dict]:
    """One row of `METRICS` (plus id, dataset, prediction) per rollout."""
    rows = []
    for t, rec in zip(trajectories, records):
        gold = heldout_gold(rec, corpus_ids)
        scored = score_trajectory(
            t.response_text(tokenizer),
            t.queries,
            t.step_docs,
            gold["answers"],
            gold["gold_keys"],
            gold["gold_docs"],
            reward_cfg,
        )
        retrieved = {pid for step in t.step_doc_ids for pid in step}
        rows.append(
            {
                "id": rec.id,
                "dataset": rec.dataset,
                "prediction": t.answer,
                "em": scored.answer_em,
                "f1": scored.answer_f1,
                "format_ok": float(scored.format_ok),
                "searches": float(t.num_searches),
                "search_key": scored.search_key if gold["gold_keys"] else math.nan,
                "gold_recall": len(retrieved & set(gold["gold_ids"])) / len(gold["gold_ids"])
                if gold["gold_ids"]
                else math.nan,
                "info_gain_sum": float(sum(scored.info_gain)) if gold["gold_docs"] else math.nan,
                "queries": t.queries,
            }
        )
    return rows


def evaluate_heldout(
    model, tokenizer, sets: Mapping[str, Sequence[QuestionRecord]], retriever, cfg, corpus: Sequence[Passage]
) -> list[dict]:
    """Greedy agent rollouts on every held-out question, scored per question."""
    corpus_ids = {passage_key(p.title, p.text): p.id for p in corpus}
    rows = []
    for records in sets.values():
        records = list(records)
        trajs = rollout_from_config(model, tokenizer, [r.question for r in records], retriever, cfg, greedy=True)
        rows += question_rows(trajs, records, tokenizer, corpus_ids, cfg.reward)
    return rows


def paired_bootstrap(
    a: Mapping[tuple, float], b: Mapping[tuple, float], n_samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float, int]:
    """Mean of a - b over the keys both have (e.g. (seed, question id)) and its percentile-bootstrap interval,
    resampling seeds and, within each, questions (keys are ``(seed, question)``); NaN pairs are left out.
    Returns (difference, lo, hi, n pairs).

    >>> a = {(0, "q1"): 1.0, (0, "q2"): 0.0, (1, "q1"): 1.0, (1, "q2"): 1.0}
    >>> b = {(0, "q1"): 0.0, (0, "q2"): 0.0, (1, "q1"): 1.0, (1, "q2"): 0.0}
    >>> d, lo, hi, n = paired_bootstrap(a, b, n_samples=200)
    >>> d, n, lo <= d <= hi
    (0.5, 4, True)
    """
    keys = [k for k in a if k in b and not (math.isnan(a[k]) or math.isnan(b[k]))]
    if not keys:
        return math.nan, math.nan, math.nan, 0
    by_seed: dict = {}
    for k in keys:
        by_seed.setdefault(k[0], []).append(a[k] - b[k])
    groups = [np.asarray(v) for _, v in sorted(by_seed.items())]
    diff = float(np.mean(np.concatenate(groups)))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_samples)
    for i in range(n_samples):  # two-stage resampling: seeds, then questions within each drawn seed
        drawn = [groups[j] for j in rng.integers(0, len(groups), len(groups))]
        stats[i] = np.mean(np.concatenate([g[rng.integers(0, len(g), len(g))] for g in drawn]))
    alpha = (1 - level) / 2
    return diff, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)), len(keys)
