"""Index building: a profile's dense + BM25 indexes (notebooks 01-02, `stepsearch index`), or one folder.

stepsearch index --profile cpu
stepsearch index build --corpus PATH --kind dense|bm25 --out DIR [--encoder NAME] [--factory STR] [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .cli import add_config_args, config_from_args, door
from .data import Passage, load_corpus
from .encoder import load_encoder
from .fileio import atomic_path, peak_rss_mb, require, write_json, write_jsonl
from .profile_data import load_profile_corpus
from .retrieval import INDEX_FORMAT, bm25_tokenize, corpus_hash, read_meta, set_search_params


def embed_passages(
    encoder, passages: Sequence[Passage], batch_size: int = 64, cache_dir: Path | None = None, chunk: int = 2048
) -> tuple[np.ndarray, bool]:
    """Embed ``title. text`` of each passage (L2-normalised float32), cached by (encoder, corpus hash).
    Returns the embeddings and whether they came from the cache."""
    key = hashlib.sha256(f"{encoder.name}|{encoder.passage_prefix}|{corpus_hash(passages)}".encode()).hexdigest()[:24]
    cache = Path(cache_dir) / "embeddings" / f"{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        emb = np.load(cache, allow_pickle=False)
        if emb.shape == (len(passages), encoder.dim):
            return emb, True
    texts = [f"{p.title}. {p.text}" for p in passages]
    parts = []
    for start in tqdm(range(0, len(texts), chunk), desc=f"encoding with {encoder.name}", unit="chunk"):
        parts.append(encoder.encode_passages(texts[start : start + chunk], batch_size=batch_size))
    emb = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype="float32")
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, emb, allow_pickle=False)
    return emb, False


def build_faiss(embeddings: np.ndarray, factory: str = "Flat", seed: int = 0):
    """A FAISS inner-product index from a factory string; trained on the embeddings when needed."""
    import faiss

    index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = (
            embeddings
            if len(embeddings) <= 100_000
            else embeddings[rng.choice(len(embeddings), 100_000, replace=False)]
        )
        index.train(sample)
    index.add(embeddings)
    set_search_params(index)
    return index


def _write_index_dir(out_dir: Path, passages: Sequence[Passage], meta: dict, write_native) -> Path:
    with atomic_path(out_dir, is_dir=True) as tmp:
        write_jsonl(tmp / "passages.jsonl", ({"id": p.id, "title": p.title, "text": p.text} for p in passages))
        write_native(tmp)
        write_json(tmp / "meta.json", meta)
    return Path(out_dir)


def _base_meta(kind: str, passages: Sequence[Passage], seconds: float) -> dict:
    return {
        "format": INDEX_FORMAT,
        "kind": kind,
        "corpus_hash": corpus_hash(passages),
        "num_passages": len(passages),
        "build_seconds": round(seconds, 3),
        "peak_rss_mb_at_build": round(peak_rss_mb(), 1),
    }


def build_dense_index(
    passages: Sequence[Passage],
    encoder,
    out_dir: Path | str,
    factory: str = "Flat",
    batch_size: int = 64,
    cache_dir: Path | None = None,
    seed: int = 0,
) -> dict:
    """Encode the corpus and save a FAISS index folder; return its metadata."""
    import faiss

    start = time.perf_counter()
    emb, cached = embed_passages(encoder, passages, batch_size, cache_dir)
    encode_seconds = time.perf_counter() - start
    index = build_faiss(emb, factory, seed)
    meta = {
        **_base_meta("dense", passages, time.perf_counter() - start),
        "encoder": encoder.name,
        "dim": int(emb.shape[1]),
        "metric": "inner_product",
        "factory": factory,
        "encode_seconds": round(encode_seconds, 3),
        "embeddings_from_cache": cached,
    }
    _write_index_dir(Path(out_dir), passages, meta, lambda d: faiss.write_index(index, str(d / "index.faiss")))
    return meta


def build_bm25_index(passages: Sequence[Passage], out_dir: Path | str, k1: float = 1.5, b: float = 0.75) -> dict:
    r"""Index ``title text`` of each passage with bm25s (English stopwords, Snowball stemmer).

    $s_\mathrm{BM25}(q, d) = \sum_{t \in q} \ln(1 + \frac{N - n_t + 0.5}{n_t + 0.5}) \frac{f(t, d)}{f(t, d) + k_1 (1 - b + b |d| / \overline{|d|})}$ (bm25s' Lucene variant)
    """
    import bm25s

    start = time.perf_counter()
    tokens = bm25_tokenize([f"{p.title} {p.text}" for p in passages], show_progress=True)
    model = bm25s.BM25(k1=k1, b=b)
    model.index(tokens, show_progress=True)
    meta = {
        **_base_meta("bm25", passages, time.perf_counter() - start),
        "k1": k1,
        "b": b,
        "tokenizer": "bm25s(en stopwords, snowball english)",
    }
    _write_index_dir(Path(out_dir), passages, meta, lambda d: model.save(str(d / "bm25"), show_progress=False))
    return meta


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def build_index(
    kind: str,
    passages: Sequence[Passage],
    out_dir: Path | str,
    encoder_name: str = "all-minilm-l6-v2",
    factory: str = "Flat",
    batch_size: int = 64,
    cache_dir: Path | None = None,
    seed: int = 0,
    encoder=None,
) -> dict:
    """Build one index folder; returns its metadata plus size and peak-memory figures."""
    if kind == "dense":
        if encoder is None:
            encoder = load_encoder(encoder_name)
        meta = build_dense_index(passages, encoder, out_dir, factory, batch_size, cache_dir, seed)
    elif kind == "bm25":
        meta = build_bm25_index(passages, out_dir)
    else:
        raise ValueError(f"--kind must be dense or bm25, got {kind!r}")
    return {**meta, "size_mb": round(dir_size_mb(Path(out_dir)), 2), "reused": False}


def ensure_index(
    kind: str,
    passages: Sequence[Passage],
    out_dir: Path,
    encoder_name: str,
    factory: str = "Flat",
    batch_size: int = 64,
    cache_dir: Path | None = None,
    seed: int = 0,
    encoder=None,
) -> dict:
    """Reuse ``out_dir`` when it was built from this corpus (and encoder / factory); else (re)build it."""
    if (out_dir / "meta.json").is_file():
        meta = read_meta(out_dir)
        same = meta["corpus_hash"] == corpus_hash(passages) and meta["kind"] == kind
        if kind == "dense":
            same = same and meta.get("encoder") == encoder_name and meta.get("factory") == factory
        if same:
            return {**meta, "size_mb": round(dir_size_mb(out_dir), 2), "reused": True}
    return build_index(kind, passages, out_dir, encoder_name, factory, batch_size, cache_dir, seed, encoder)


def build_profile_indexes(cfg, passages: Sequence[Passage], encoder=None) -> dict[str, dict]:
    """Dense and BM25 indexes of the profile's corpus under ``runs/<profile>/index/``."""
    out = {}
    for kind in ("dense", "bm25"):
        out[kind] = ensure_index(
            kind,
            passages,
            cfg.path("index", kind),
            cfg.model.encoder,
            cfg.retrieval.faiss_factory,
            cfg.retrieval.encode_batch_size,
            cfg.cache_dir,
            cfg.seed,
            encoder,
        )
    return out


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Build retrieval indexes: a profile's dense + BM25 indexes (default), or one folder (`build`).",
        epilog="examples:\n  stepsearch index --profile smoke\n"
        "  stepsearch index build --corpus ../shared/data/corpus/wiki_subset.jsonl --kind bm25 --out runs/bm25",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    sub = ap.add_subparsers(dest="command")
    b = sub.add_parser("build", help="build one dense (FAISS) or BM25 (bm25s) index folder from a corpus file")
    b.add_argument("--corpus", required=True, help="passage file: jsonl id/title/text, FlashRAG contents, or DPR tsv")
    b.add_argument("--kind", required=True, choices=["dense", "bm25"])
    b.add_argument("--out", required=True)
    b.add_argument("--encoder", default="all-minilm-l6-v2", help="encoder name or hub id (dense)")
    b.add_argument("--factory", default="Flat", help="FAISS factory string, e.g. Flat, HNSW32, IVF256,PQ32")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--limit", type=int, default=0, help="index only the first N passages")
    args = ap.parse_args(argv)
    if args.command == "build":
        passages = load_corpus(require(args.corpus, "`make data` (the profile's files)"), limit=args.limit)
        meta = build_index(args.kind, passages, Path(args.out), args.encoder, args.factory, args.batch_size)
        print(" ".join(f"{k}={v}" for k, v in meta.items() if k != "corpus_hash"))
        return 0
    cfg = config_from_args(args)
    for kind, meta in build_profile_indexes(cfg, load_profile_corpus(cfg)).items():
        print(
            f"{kind}: {cfg.path('index', kind)} ({meta['num_passages']} passages, "
            f"{'reused' if meta['reused'] else 'built'})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
