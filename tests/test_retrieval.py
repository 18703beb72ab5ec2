"""Dense / BM25 / hybrid indexes on real shared passages; round trips and refusals."""

import json
import subprocess
import sys

import pytest

from stepsearch_lib.data import passage_key
from stepsearch_lib.decompose import resolved_sub_questions
from stepsearch_lib.index import build_index
from stepsearch_lib.recall import build_queries, recall_rows
from stepsearch_lib.retrieval import (
    HybridRetriever,
    IndexMismatchError,
    corpus_hash,
    load_retriever,
    retriever_from_dirs,
)


def test_round_trip_and_metadata(index_dirs, small_corpus, encoder):
    for kind in ("dense", "bm25"):
        r = load_retriever(index_dirs / kind, encoder=encoder if kind == "dense" else None)
        assert r.meta["kind"] == kind and r.meta["num_passages"] == len(small_corpus)
        assert r.meta["corpus_hash"] == corpus_hash(small_corpus)
        p = small_corpus[5]
        top = r.search(f"{p.title} {p.text}", 3)
        assert top[0].passage == p and top[0].score >= top[-1].score
    assert json.loads((index_dirs / "dense" / "meta.json").read_text())["dim"] == 384


def test_refuses_other_corpus_or_encoder(index_dirs, small_corpus, encoder):
    with pytest.raises(IndexMismatchError, match="another corpus"):
        load_retriever(index_dirs / "dense", encoder=encoder, expected_corpus_hash=corpus_hash(small_corpus[1:]))
    with pytest.raises(IndexMismatchError, match="built with encoder 'all-minilm-l6-v2', not 'intfloat/e5-base-v2'"):
        load_retriever(index_dirs / "dense", expected_encoder="intfloat/e5-base-v2")


def test_damaged_passages_are_refused(tmp_path, small_corpus, index_dirs):
    import shutil

    copy = tmp_path / "bm25"
    shutil.copytree(index_dirs / "bm25", copy)
    lines = (copy / "passages.jsonl").read_text().splitlines()
    (copy / "passages.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IndexMismatchError, match="does not match meta.json"):
        load_retriever(copy)


def test_real_subquestion_gold_in_top3(index_dirs, musique_dev, encoder):
    rec = next(r for r in musique_dev if r.id.startswith("2hop"))
    first = resolved_sub_questions(rec)[0]
    for kind in ("dense", "bm25"):
        hits = load_retriever(index_dirs / kind, encoder=encoder).search(first.question, 3)
        assert passage_key(first.paragraph.title, first.paragraph.text) in {
            passage_key(h.passage.title, h.passage.text) for h in hits
        }, (kind, first.question)


def test_hop_recall_is_high_on_the_slice(index_dirs, musique_dev, small_corpus, encoder):
    queries = build_queries({"musique": musique_dev}, small_corpus)
    assert {q.group for q in queries} >= {"musique hop 1", "musique hop 2"}
    for kind in ("dense", "bm25"):
        rows = recall_rows(load_retriever(index_dirs / kind, encoder=encoder), queries, ks=(3, 10))
        hop1 = next(r for r in rows if r["group"] == "musique hop 1" and r["k"] == 10)
        assert hop1["recall"] >= 0.6, (kind, rows)


def test_hybrid_is_reciprocal_rank_fusion(index_dirs, encoder):
    dense = load_retriever(index_dirs / "dense", encoder=encoder)
    bm25 = load_retriever(index_dirs / "bm25")
    hybrid = HybridRetriever([dense, bm25], rrf_k=60, depth=20)
    query = "Which country is the Eiffel Tower in?"
    expected = {}
    for r in (dense, bm25):
        for rank, h in enumerate(r.search(query, 20), 1):
            expected[h.passage.id] = expected.get(h.passage.id, 0.0) + 1 / (60 + rank)
    got = hybrid.search(query, 5)
    best = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [(h.passage.id, round(h.score, 12)) for h in got] == [(i, round(s, 12)) for i, s in best]
    assert isinstance(
        retriever_from_dirs([index_dirs / "dense", index_dirs / "bm25"], encoder=encoder), HybridRetriever
    )


@pytest.mark.parametrize("factory", ["HNSW32", "IVF8,Flat"])
def test_ann_factories_agree_with_flat(tmp_path, small_corpus, encoder, index_dirs, factory):
    build_index(
        "dense", small_corpus, tmp_path / "ann", encoder=encoder, factory=factory, cache_dir=index_dirs / "cache"
    )
    ann = load_retriever(tmp_path / "ann", encoder=encoder)
    flat = load_retriever(index_dirs / "dense", encoder=encoder)
    queries = [p.title for p in small_corpus[:40]]
    agree = [
        len({h.passage.id for h in a} & {h.passage.id for h in f}) / 10
        for a, f in zip(ann.batch_search(queries, 10), flat.batch_search(queries, 10))
    ]
    assert ann.meta["factory"] == factory and sum(agree) / len(agree) >= 0.9


def test_cli_builds_a_bm25_index(tmp_path, data_root):
    out = tmp_path / "cli_bm25"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepsearch_lib.index",
            "build",
            "--corpus",
            str(data_root / "corpus" / "wiki_passages.jsonl"),
            "--kind",
            "bm25",
            "--out",
            str(out),
            "--limit",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "num_passages=500" in proc.stdout and load_retriever(out).meta["num_passages"] == 500
