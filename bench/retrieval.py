"""Retrieval on the profile corpus: QPS and recall@10 against exact search (Flat) for Flat, HNSW,
IVF-PQ, BM25, Hybrid and the HTTP server (batches of 32); build time and memory; scaling over real
corpus sizes and synthetic vectors (FAISS only).

Vector-search QPS excludes query encoding (timed separately as `encode_qps`); BM25, Hybrid and
the server are end to end. For BM25 / Hybrid, "overlap with Flat" compares different rankers
(lexical vs dense), so their gold recall@10 is the number to read.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import numpy as np

from bench.common import save, timed
from stepsearch_lib.config import get_config
from stepsearch_lib.data import passage_key
from stepsearch_lib.encoder import load_encoder
from stepsearch_lib.index import build_faiss, embed_passages
from stepsearch_lib.profile_data import load_eval_sets, load_profile_corpus
from stepsearch_lib.retrieval import RemoteRetriever, retriever_from_dirs

BATCH = 32
FACTORIES = ("Flat", "HNSW32", "IVF256,PQ48")


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))


def _search_all(index, q: np.ndarray, k: int = 10) -> np.ndarray:
    return np.concatenate([index.search(q[i : i + BATCH], k)[1] for i in range(0, len(q), BATCH)])


def _faiss_row(name: str, emb: np.ndarray, q: np.ndarray, truth: np.ndarray | None) -> tuple[dict, np.ndarray]:
    import faiss

    index, build_s = timed(build_faiss, emb, name)
    ids, search_s = timed(_search_all, index, q, repeat=3)
    return {
        "index": name,
        "build_s": build_s,
        "qps": len(q) / search_s,
        "index_mb": faiss.serialize_index(index).nbytes / 2**20,
        "recall10_vs_flat": 1.0 if truth is None else _overlap(ids, truth),
    }, ids


def _gold_recall(hits_ids: list[list[str]], gold: list[set[str]]) -> float:
    return float(np.mean([len(set(h) & g) / len(g) for h, g in zip(hits_ids, gold) if g]))


def _ranker_row(label: str, retriever, queries: list[str], gold: list[set[str]], flat_ids: list[list[str]]) -> dict:
    """End-to-end QPS (batches of BATCH) and recall@10 of any `Retriever` (BM25, hybrid, HTTP)."""
    hits, s = timed(
        lambda: [h for i in range(0, len(queries), BATCH) for h in retriever.batch_search(queries[i : i + BATCH], 10)]
    )
    ids = [[h.passage.id for h in hs] for hs in hits]
    return {
        "index": label,
        "qps": len(queries) / s,
        "gold_recall10": _gold_recall(ids, gold),
        "recall10_vs_flat": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, flat_ids)])),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(profile: str = "cpu", n_queries: int = 512, synthetic_max: int = 200_000) -> dict:
    cfg = get_config(profile)
    encoder = load_encoder(cfg.model.encoder)
    passages = load_profile_corpus(cfg)
    emb, _ = embed_passages(encoder, passages, cache_dir=cfg.cache_dir)
    key_to_id = {passage_key(p.title, p.text): p.id for p in passages}
    records = [r for recs in load_eval_sets(cfg).values() for r in recs if r.gold_paragraphs][:n_queries]
    queries = [r.question for r in records]
    gold = [
        {key_to_id[k] for k in (passage_key(p.title, p.text) for p in r.gold_paragraphs) if k in key_to_id}
        for r in records
    ]
    q, enc_s = timed(encoder.encode_queries, queries)
    q = np.asarray(q, dtype="float32")
    rows, truth = [], None
    for name in FACTORIES:
        row, ids = _faiss_row(name, emb, q, truth)
        truth = ids if truth is None else truth
        row["gold_recall10"] = _gold_recall([[passages[i].id for i in r] for r in ids], gold)
        rows.append(row)

    flat_ids = [[passages[i].id for i in r] for r in truth]
    for label, dirs in (("BM25", ["bm25"]), ("Hybrid (RRF)", ["dense", "bm25"])):
        retriever = retriever_from_dirs([cfg.path("index", d) for d in dirs], cfg.retrieval.rrf_k, encoder)
        rows.append(_ranker_row(label, retriever, queries, gold, flat_ids))

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stepsearch_lib.server",
            "--index",
            str(cfg.path("index", "dense")),
            "--port",
            str(port),
            "--max-queries",
            str(BATCH),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        remote = RemoteRetriever(f"http://127.0.0.1:{port}/retrieve", timeout_s=60)
        deadline = time.monotonic() + 300
        while True:
            try:
                remote.batch_search(["warm up"], 1)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(1)
        rows.append(_ranker_row("HTTP server (dense Flat)", remote, queries, gold, flat_ids))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    scaling = []
    for n in (5_000, 10_000, 20_000, len(emb)):
        sub = emb[:n]
        t = _search_all(build_faiss(sub, "Flat"), q)
        for name in FACTORIES:
            row, _ = _faiss_row(name, sub, q, None if name == "Flat" else t)
            scaling.append({"source": "real", "n": n, **row})
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((256, emb.shape[1])).astype("float32")
    for n in [s for s in (50_000, 100_000, 200_000, 500_000, 1_000_000) if s <= synthetic_max]:
        x = centers[rng.integers(0, 256, n)] + 0.5 * rng.standard_normal((n, emb.shape[1])).astype("float32")
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        qs = x[rng.choice(n, 256, replace=False)] + 0.05 * rng.standard_normal((256, emb.shape[1])).astype("float32")
        t = _search_all(build_faiss(x, "Flat"), qs)
        for name in FACTORIES:
            row, _ = _faiss_row(name, x, qs, None if name == "Flat" else t)
            scaling.append({"source": "synthetic", "n": n, **row})
    ann = [r for r in rows if r["index"] in FACTORIES[1:]]
    flat_qps = rows[0]["qps"]
    result = {
        "corpus": len(passages),
        "queries": len(queries),
        "batch": BATCH,
        "encode_qps": len(queries) / enc_s,
        "rows": rows,
        "scaling": scaling,
        "goal_met": any(r["qps"] >= 10 * flat_qps and r["recall10_vs_flat"] >= 0.98 for r in ann),
        "goal": "an ANN index >= 10x Flat QPS at recall@10 >= 0.98",
    }
    save("retrieval", result)
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--queries", type=int, default=512)
    ap.add_argument("--synthetic-max", type=int, default=200_000, help="largest synthetic FAISS size (1000000 for 1M)")
    a = ap.parse_args()
    run(a.profile, a.queries, a.synthetic_max)
