"""Recall@k of gold paragraphs, per dataset and per MuSiQue hop.

recall@k(q) = |gold(q) ∩ top_k(q)| / |gold(q)|, averaged over queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .data import Passage, QuestionRecord, passage_key
from .decompose import resolved_sub_questions
from .retrieval import Retriever


@dataclass(frozen=True)
class RecallQuery:
    group: str
    """Table row label: the dataset, or `musique hop h`."""
    query: str
    gold_ids: frozenset[str]


def build_queries(datasets: Mapping[str, Sequence[QuestionRecord]], corpus: Sequence[Passage]) -> list[RecallQuery]:
    """Queries with their gold passage ids. MuSiQue (records with sub-questions and paragraphs):
    one query per resolved sub-question, grouped by hop; others: the question, all gold paragraphs.
    A gold paragraph missing from the corpus is an error (nothing is dropped silently)."""
    ids = {passage_key(p.title, p.text): p.id for p in corpus}

    def gold(paragraphs, rec) -> frozenset[str]:
        out = set()
        for p in paragraphs:
            key = passage_key(p.title, p.text)
            if key not in ids:
                raise KeyError(f"gold paragraph {p.title!r} of {rec.id} ({rec.source}) is not in the corpus")
            out.add(ids[key])
        return frozenset(out)

    queries = []
    for name, records in datasets.items():
        for rec in records:
            if not rec.gold_paragraphs:
                continue  # e.g. Bamboogle: no gold evidence, nothing to measure
            subs = resolved_sub_questions(rec) if name == "musique" else []
            if subs and all(s.paragraph is not None for s in subs):
                for hop, sq in enumerate(subs, 1):
                    queries.append(RecallQuery(f"musique hop {hop}", sq.question, gold([sq.paragraph], rec)))
            else:
                queries.append(RecallQuery(name, rec.question, gold(rec.gold_paragraphs, rec)))
    return queries


def recall_rows(
    retriever: Retriever, queries: Sequence[RecallQuery], ks: Sequence[int] = (1, 3, 5, 10), batch_size: int = 256
) -> list[dict]:
    r"""One row per (group, k): ``{"group", "k", "recall", "n"}``.

    $\mathrm{recall@}k(q) = |G(q) \cap \mathrm{top}_k(q)| / |G(q)|$, averaged over the group's queries.
    """
    kmax = max(ks)
    hits: list[list[str]] = []
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        hits += [[h.passage.id for h in row] for row in retriever.batch_search([q.query for q in batch], kmax)]
    sums: dict[tuple[str, int], float] = {}
    counts: dict[str, int] = {}
    for q, ranked in zip(queries, hits):
        counts[q.group] = counts.get(q.group, 0) + 1
        for k in ks:
            found = len(q.gold_ids.intersection(ranked[:k])) / len(q.gold_ids)
            sums[(q.group, k)] = sums.get((q.group, k), 0.0) + found
    return [{"group": g, "k": k, "recall": sums[(g, k)] / counts[g], "n": counts[g]} for g in counts for k in ks]


def recall_table(
    retrievers: Mapping[str, Retriever], queries: Sequence[RecallQuery], ks: Sequence[int] = (1, 3, 5, 10)
) -> list[dict]:
    """`recall_rows` for several retrievers: rows ``{"retriever", "group", "k", "recall", "n"}``."""
    return [{"retriever": name, **row} for name, r in retrievers.items() for row in recall_rows(r, queries, ks)]
