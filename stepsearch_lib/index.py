"""Index building: a profile's dense + BM25 indexes (notebooks 01-02, `stepsearch index`), or one folder.

stepsearch index --profile cpu
stepsearch index build --corpus PATH --kind dense|bm25 --out DIR [--encoder NAME] [--factory STR] [--limit N]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from .cli import add_config_args, config_from_args, door
from .data import Passage, load_corpus
from .encoder import load_encoder
from .fileio import require
from .profile_data import load_profile_corpus
from .retrieval import build_bm25_index, build_dense_index, corpus_hash, read_meta


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
