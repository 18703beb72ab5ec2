"""StepSearch training-data construction: decompose -> write queries -> filter by retrieval.

The paper builds its training set from MuSiQue: each question is decomposed into
sub-questions, several search queries are written per sub-question, and a query survives
when search engines retrieve the sub-question's gold paragraph. Here:

1. `decompose` gives each question its hops (sub-question, sub-answer, gold paragraph):
   MuSiQue ``question_decomposition`` (placeholders resolved), 2Wiki ``qa_pairs`` or evidence
   triples, HotpotQA supporting facts (bridge / comparison heuristics).
2. query writers (`query_writers`) propose queries per hop;
3. `construct` keeps a query when the hop's gold paragraph is in the top-k of at least
   ``min_retrievers`` retrievers; a hop when one of its queries survives; a question when all
   its hops do. Every stage is counted.

Output records carry the released StepSearch fields (`to_stepsearch`).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from .cli import add_config_args, config_from_args, door
from .data import Paragraph, Passage, QuestionRecord, passage_key
from .decompose import resolved_sub_questions
from .fileio import write_json, write_jsonl
from .index import build_profile_indexes
from .models import load_policy
from .profile_data import load_construct_questions, load_profile_corpus
from .query_writers import LocalChatWriter, OpenAIWriter, QueryWriter, RuleWriter, keyword_form
from .retrieval import Retriever, load_retriever
from .stepsearch_format import write_stepsearch


@dataclass(frozen=True)
class Hop:
    question: str
    answer: str
    paragraph: Paragraph | None


def decompose(record: QuestionRecord) -> list[Hop]:
    """The hops of a question (empty when the source gives no way to decompose it)."""
    if record.dataset == "musique" or (
        record.sub_questions and "#" in " ".join(s.question for s in record.sub_questions)
    ):
        return [Hop(s.question, s.answer, s.paragraph) for s in resolved_sub_questions(record)]
    if record.sub_questions:  # 2Wiki qa_pairs
        return [Hop(s.question, s.answer, s.paragraph) for s in record.sub_questions]
    if record.dataset == "hotpotqa" and len(record.gold_paragraphs) == 2:
        return _hotpot_hops(record)
    return []


def _mentions(question: str, title: str) -> bool:
    core = re.sub(r"\s*\(.*?\)\s*", " ", title).strip().lower()
    return bool(core) and core in question.lower()


def _hotpot_hops(record: QuestionRecord) -> list[Hop]:
    """HotpotQA has no decomposition: build one from its two supporting paragraphs.

    comparison: one lookup per entity, ``<title> <attribute words of the question>``.
    bridge: hop 1 is the paragraph the question names (its answer is the bridge entity,
    the other paragraph's title); hop 2 asks the question's attribute of that entity.
    """
    a, b = record.gold_paragraphs
    titles_words = {w.lower() for p in (a, b) for w in re.findall(r"\w+", p.title)}
    attribute = " ".join(w for w in keyword_form(record.question).split() if w.lower() not in titles_words)
    if record.type == "comparison":
        return [Hop(f"{p.title} {attribute}".strip(), "", p) for p in (a, b)]
    first, second = (
        (b, a) if _mentions(record.question, b.title) and not _mentions(record.question, a.title) else (a, b)
    )
    return [
        Hop(record.question, second.title, first),
        Hop(f"{second.title} {attribute}".strip(), record.answers[0], second),
    ]


@dataclass
class ConstructionResult:
    records: list[dict]
    """Kept questions in the StepSearch format."""
    queries: list[dict]
    """One row per written query: id, hop, writer, query, hit per retriever, kept."""
    counts: Counter = field(default_factory=Counter)
    """Counts at every stage (see `construct`)."""


def construct(
    records: Sequence[QuestionRecord],
    writers: Sequence[QueryWriter],
    retrievers: Mapping[str, Retriever],
    corpus: Sequence[Passage],
    topk: int = 5,
    min_retrievers: int = 1,
    max_queries_per_hop: int = 8,
) -> ConstructionResult:
    r"""Run the pipeline. ``counts`` keys: questions_in, questions_decomposed, hops,
    queries_written/<writer>, queries_kept/<writer>, query_hits/<retriever>, hops_kept, questions_kept,
    and dropped/<reason> for every question that leaves.

    $\mathrm{keep}(s, j) = [\sum_{R} \mathbb 1\{d_j^* \in \mathrm{top}_k^R(s)\} \ge N]$
    """
    if not 1 <= min_retrievers <= len(retrievers):
        raise ValueError(f"min_retrievers must be in 1..{len(retrievers)}, got {min_retrievers}")
    ids = {passage_key(p.title, p.text): p.id for p in corpus}
    counts: Counter = Counter(questions_in=len(records))

    # 1. decompose: a question stays only when every hop has a gold paragraph the corpus holds (else: why not)
    decomposed: list[tuple[QuestionRecord, list[Hop], list[str]]] = []
    for rec in records:
        hops = decompose(rec)
        if not rec.answerable:
            counts["dropped/unanswerable"] += 1
        elif not hops:
            counts["dropped/no_decomposition"] += 1
        elif any(h.paragraph is None for h in hops):
            counts["dropped/hop_without_paragraph"] += 1
        elif any(passage_key(h.paragraph.title, h.paragraph.text) not in ids for h in hops):
            counts["dropped/gold_not_in_corpus"] += 1
        else:
            gold = [ids[passage_key(h.paragraph.title, h.paragraph.text)] for h in hops]
            decomposed.append((rec, hops, gold))
    counts["questions_decomposed"] = len(decomposed)
    counts["hops"] = sum(len(h) for _, h, _ in decomposed)

    # 2. write: every writer proposes queries for every hop's sub-question -> (question, hop, writer, query)
    flat = [(qi, hi) for qi, (_, hops, _) in enumerate(decomposed) for hi in range(len(hops))]
    candidates: list[tuple[int, int, str, str]] = []
    for writer in writers:
        written = writer.write_batch([decomposed[qi][1][hi].question for qi, hi in flat])
        for (qi, hi), queries in zip(flat, written):
            for q in queries[:max_queries_per_hop]:
                candidates.append((qi, hi, writer.name, q))
            counts[f"queries_written/{writer.name}"] += len(queries[:max_queries_per_hop])

    # 3. filter: a query survives when enough retrievers put the hop's gold paragraph in their top-k (keep(s, j))
    texts = [c[3] for c in candidates]
    hit_sets = {
        name: [{h.passage.id for h in row} for row in r.batch_search(texts, topk)] if texts else []
        for name, r in retrievers.items()
    }
    rows = []
    survivors: dict[tuple[int, int], list[str]] = {}
    for i, (qi, hi, writer, query) in enumerate(candidates):
        gold_id = decomposed[qi][2][hi]
        hits = {name: gold_id in sets[i] for name, sets in hit_sets.items()}
        kept = sum(hits.values()) >= min_retrievers
        for name, hit in hits.items():
            counts[f"query_hits/{name}"] += hit
        counts[f"queries_kept/{writer}"] += kept
        if kept and query.lower() not in (s.lower() for s in survivors.get((qi, hi), [])):
            survivors.setdefault((qi, hi), []).append(query)
        rows.append(
            {
                "id": decomposed[qi][0].id,
                "hop": hi + 1,
                "writer": writer,
                "query": query,
                **{f"hit/{n}": h for n, h in hits.items()},
                "kept": kept,
            }
        )

    # 4. keep: a question whose every hop kept a query becomes a StepSearch record (sub_searchs = the survivors)
    out = []
    for qi, (rec, hops, _) in enumerate(decomposed):
        kept_hops = [survivors.get((qi, hi), []) for hi in range(len(hops))]
        counts["hops_kept"] += sum(bool(k) for k in kept_hops)
        if all(kept_hops):
            out.append(to_stepsearch(rec, hops, kept_hops))
        else:
            counts["dropped/hop_without_surviving_query"] += 1
    counts["questions_kept"] = len(out)
    return ConstructionResult(out, rows, counts)


def to_stepsearch(rec: QuestionRecord, hops: Sequence[Hop], queries: Sequence[Sequence[str]]) -> dict:
    """A record with the released StepSearch fields."""
    return {
        "id": rec.id,
        "question": rec.question,
        "final_answer": rec.answers[0],
        "answer_aliases": list(rec.answers[1:]),
        "sub_searchs": [list(q) for q in queries],
        "sub_support_docs": [{"title": h.paragraph.title, "paragraph_text": h.paragraph.text} for h in hops],
    }


def split_records(records: Sequence[dict], dev_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Deterministic train / dev split (a seeded shuffle; the input order is not changed)."""
    if not 0 <= dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_dev = round(len(records) * dev_fraction)
    dev_idx = set(order[:n_dev])
    return ([r for i, r in enumerate(records) if i not in dev_idx], [r for i, r in enumerate(records) if i in dev_idx])


# ----------------------------------------------------------------------------- profile-driven run


def make_writers(cfg, names: Sequence[str] | None = None) -> list[QueryWriter]:
    """Query writers by name: ``rules``, ``local_llm`` (the profile's policy model, no adapter),
    ``openai`` (OPENAI_BASE_URL / OPENAI_MODEL / OPENAI_API_KEY)."""
    writers: list[QueryWriter] = []
    for name in names if names is not None else cfg.data.construct_writers:
        if name == "rules":
            writers.append(RuleWriter())
        elif name == "local_llm":
            # the base policy (no adapter, full precision) writes the queries
            model, tok = load_policy(replace(cfg.model, load_in_4bit=False), seed=cfg.seed)
            writers.append(
                LocalChatWriter(
                    model, tok, batch_size=cfg.rollout.batch_size * 2, max_items=cfg.data.construct_llm_max_hops
                )
            )
        elif name == "openai":
            writers.append(OpenAIWriter())
        else:
            raise ValueError(f"unknown query writer {name!r}; expected rules, local_llm or openai")
    return writers


def run_construction(
    cfg,
    records: Sequence[QuestionRecord],
    writers: Sequence[QueryWriter],
    retrievers: Mapping[str, Retriever],
    corpus: Sequence[Passage],
) -> tuple[ConstructionResult, dict]:
    """`construct`, then write ``runs/<p>/data/``: stepsearch_{train,dev}.jsonl + HF datasets,
    construction_queries.jsonl (every query with its hits) and construction_counts.json."""
    result = construct(records, writers, retrievers, corpus, cfg.data.construct_topk, cfg.data.construct_min_retrievers)
    for w in writers:
        for key, value in w.stats.items():
            result.counts[f"writer/{w.name}/{key}"] = value
    train, dev = split_records(result.records, cfg.data.dev_fraction, cfg.seed)
    out = cfg.path("data")
    paths = {
        "train": write_stepsearch(train, out, "stepsearch_train")["jsonl"],
        "dev": write_stepsearch(dev, out, "stepsearch_dev")["jsonl"],
        "queries": write_jsonl(out / "construction_queries.jsonl", result.queries),
        "counts": write_json(out / "construction_counts.json", dict(sorted(result.counts.items()))),
    }
    return result, paths


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Construct the StepSearch training data: decompose, write queries, keep those retrieval confirms.",
        epilog="example: stepsearch construct --profile smoke   (writes runs/smoke/data/stepsearch_{train,dev}.jsonl)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    cfg = config_from_args(ap.parse_args(argv))
    records = load_construct_questions(cfg)
    corpus = load_profile_corpus(cfg)
    if not all((cfg.path("index", k) / "meta.json").is_file() for k in ("dense", "bm25")):
        print(f"[construct] building the {cfg.profile} profile's indexes first (stepsearch index)", file=sys.stderr)
    build_profile_indexes(cfg, corpus)  # reused when already built from this corpus
    retrievers = {k: load_retriever(cfg.path("index", k)) for k in ("dense", "bm25")}
    result, paths = run_construction(cfg, records, make_writers(cfg), retrievers, corpus)
    print(f"kept {result.counts['questions_kept']} of {result.counts['questions_in']} questions")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
