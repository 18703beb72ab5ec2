"""Retrieval: dense FAISS and bm25s indexes behind one `Retriever` interface.

An index folder holds ``meta.json`` (kind, encoder, dim, metric, factory, corpus hash,
passage count, build time), the passages (``passages.jsonl``) and the native index
(``index.faiss`` or the bm25s folder ``bm25/``) -- no pickle anywhere. Loading an index
for another corpus or another encoder is refused.

Retrievers: `DenseRetriever`, `BM25Retriever`, `HybridRetriever` (reciprocal-rank fusion)
and `RemoteRetriever` (a Search-R1-compatible ``/retrieve`` server over HTTP).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .cli import stage_command
from .data import Passage, load_corpus, split_contents
from .encoder import load_encoder
from .fileio import MissingInputError, require

INDEX_FORMAT = 1
"""Version of the index folder layout."""


class IndexMismatchError(ValueError):
    """An index was built from another corpus or encoder than the one it is used with."""


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


def corpus_hash(passages: Sequence[Passage]) -> str:
    """SHA-256 over (id, title, text) of every passage, in order."""
    h = hashlib.sha256()
    for p in passages:
        h.update(f"{p.id}\t{p.title}\t{p.text}\n".encode("utf-8"))
    return h.hexdigest()


class Retriever:
    """`search(query, k)` and `batch_search(queries, k)` -> passages with scores, best first.

    An empty (or whitespace-only) query gets an empty hit list from every retriever, local or remote, so a
    rollout's ``<search></search>`` sees the same thing whichever retriever serves it. Subclasses implement
    `_batch_search` for non-empty queries."""

    def batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        asked = [i for i, q in enumerate(queries) if q.strip()]
        out: list[list[Hit]] = [[] for _ in queries]
        if asked:
            for i, hits in zip(asked, self._batch_search([queries[i] for i in asked], k)):
                out[i] = hits
        return out

    def _batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        raise NotImplementedError

    def search(self, query: str, k: int) -> list[Hit]:
        return self.batch_search([query], k)[0]


# ----------------------------------------------------------------------------- dense


def set_search_params(index, ef_search: int = 128, nprobe: int = 16) -> None:
    import faiss

    base = faiss.downcast_index(index)
    if hasattr(base, "hnsw"):
        base.hnsw.efSearch = ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe


class DenseRetriever(Retriever):
    r"""FAISS over unit passage embeddings ``E(title. text)``.

    $s_\mathrm{dense}(q, d) = E(q)^\top E(d)$ (unit vectors: the cosine)
    """

    def __init__(self, index, passages: Sequence[Passage], encoder, meta: dict):
        self.index, self.passages, self.encoder, self.meta = index, list(passages), encoder, meta

    def _batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        q = self.encoder.encode_queries(list(queries))
        scores, ids = self.index.search(q, k)
        return [
            [Hit(self.passages[i], float(s)) for s, i in zip(srow, irow) if i >= 0] for srow, irow in zip(scores, ids)
        ]


# ----------------------------------------------------------------------------- BM25


def bm25_tokenize(texts: Sequence[str], show_progress: bool = False):
    """bm25s tokens with the vocabulary in sorted order: bm25s numbers words in set order (it changes
    with Python's hash seed), which made two builds of the same index differ byte for byte."""
    import bm25s
    import Stemmer
    from bm25s.tokenization import Tokenized

    tok = bm25s.tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=show_progress)
    vocab = {word: i for i, word in enumerate(sorted(tok.vocab))}
    remap = {old: vocab[word] for word, old in tok.vocab.items()}
    return Tokenized(ids=[[remap[i] for i in doc] for doc in tok.ids], vocab=vocab)


class BM25Retriever(Retriever):
    def __init__(self, model, passages: Sequence[Passage], meta: dict):
        self.model, self.passages, self.meta = model, list(passages), meta

    def _batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        k = min(k, len(self.passages))
        tokens = bm25_tokenize(queries)
        ids, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for irow, srow in zip(ids, scores):
            # bm25s pads with score 0 when fewer documents match: drop non-matches
            out.append([Hit(self.passages[int(i)], float(s)) for i, s in zip(irow, srow) if s > 0])
        return out


# ----------------------------------------------------------------------------- hybrid


class HybridRetriever(Retriever):
    r"""Reciprocal-rank fusion: score(d) = sum over retrievers of 1 / (rrf_k + rank(d)).

    $s_\mathrm{RRF}(d) = \sum_r 1 / (k_\mathrm{rrf} + \mathrm{rank}_r(d))$
    """

    def __init__(self, retrievers: Sequence[Retriever], rrf_k: int = 60, depth: int = 50):
        if len(retrievers) < 2:
            raise ValueError("a hybrid retriever needs at least two retrievers")
        self.retrievers, self.rrf_k, self.depth = list(retrievers), rrf_k, depth

    def _batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        depth = max(k, self.depth)
        per_retriever = [r.batch_search(queries, depth) for r in self.retrievers]
        out = []
        for qi in range(len(queries)):
            fused: dict[str, float] = {}
            by_id: dict[str, Passage] = {}
            for results in per_retriever:
                for rank, hit in enumerate(results[qi], 1):
                    fused[hit.passage.id] = fused.get(hit.passage.id, 0.0) + 1.0 / (self.rrf_k + rank)
                    by_id[hit.passage.id] = hit.passage
            best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            out.append([Hit(by_id[pid], score) for pid, score in best])
        return out


# ----------------------------------------------------------------------------- loading


def read_meta(index_dir: Path | str) -> dict:
    path = Path(index_dir) / "meta.json"
    if not path.is_file():
        raise MissingInputError(
            f"{index_dir} is not an index folder (no meta.json); `stepsearch index --profile PROFILE` "
            f"builds a profile's indexes"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != INDEX_FORMAT:
        raise IndexMismatchError(f"{path}: index format {meta.get('format')} is not {INDEX_FORMAT}; rebuild it")
    return meta


def load_retriever(
    index_dir: Path | str, encoder=None, expected_corpus_hash: str | None = None, expected_encoder: str | None = None
) -> Retriever:
    """Load a dense or BM25 index folder. Refuses an index whose corpus hash or encoder differs
    from the expected ones (or from the encoder object passed in)."""
    index_dir = Path(index_dir)
    meta = read_meta(index_dir)
    if expected_corpus_hash is not None and meta["corpus_hash"] != expected_corpus_hash:
        raise IndexMismatchError(
            f"{index_dir} was built from another corpus (hash {meta['corpus_hash'][:12]}, "
            f"expected {expected_corpus_hash[:12]}); rebuild the index for this corpus"
        )
    passages = load_corpus(index_dir / "passages.jsonl")
    if corpus_hash(passages) != meta["corpus_hash"] or len(passages) != meta["num_passages"]:
        raise IndexMismatchError(f"{index_dir}/passages.jsonl does not match meta.json; the folder is damaged")
    if meta["kind"] == "bm25":
        import bm25s

        return BM25Retriever(bm25s.BM25.load(str(index_dir / "bm25"), show_progress=False), passages, meta)
    if meta["kind"] != "dense":
        raise IndexMismatchError(f"{index_dir}: unknown index kind {meta['kind']!r}")
    wanted = expected_encoder or (encoder.name if encoder is not None else None)
    if wanted is not None and wanted != meta["encoder"]:
        raise IndexMismatchError(f"{index_dir} was built with encoder {meta['encoder']!r}, not {wanted!r}")
    if encoder is None:
        encoder = load_encoder(meta["encoder"])
    if encoder.dim != meta["dim"]:
        raise IndexMismatchError(f"{index_dir}: encoder dim {encoder.dim} != index dim {meta['dim']}")
    import faiss

    index = faiss.read_index(str(index_dir / "index.faiss"))
    set_search_params(index)
    return DenseRetriever(index, passages, encoder, meta)


def retriever_from_dirs(index_dirs: Sequence[Path | str], rrf_k: int = 60, encoder=None) -> Retriever:
    """One index folder -> its retriever; several -> their reciprocal-rank fusion (all over one corpus)."""
    retrievers = [load_retriever(d, encoder=encoder) for d in index_dirs]
    hashes = {r.meta["corpus_hash"] for r in retrievers}
    if len(hashes) > 1:
        raise IndexMismatchError(f"indexes {list(map(str, index_dirs))} were built from different corpora")
    return retrievers[0] if len(retrievers) == 1 else HybridRetriever(retrievers, rrf_k)


# ----------------------------------------------------------------------------- remote


class RemoteRetrievalError(RuntimeError):
    """The retrieval server refused a request or could not be reached."""


def passage_from_document(doc: dict) -> Passage:
    """A Search-R1 ``document`` (``contents`` = ``title\\ntext``, title maybe quoted) -> `Passage`."""
    if "contents" in doc:
        title, text = split_contents(str(doc["contents"]))
    else:
        title, text = str(doc.get("title", "")), str(doc.get("text", ""))
    return Passage(str(doc.get("id", "")), title, text)


class RemoteRetriever(Retriever):
    """Client of a Search-R1-compatible server: ``POST {url}`` with ``{queries, topk, return_scores}``.

    Transport errors and 5xx answers are retried with exponential backoff; a 4xx answer is
    raised at once with the server's message. Every request has a timeout.
    """

    def __init__(
        self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.5, max_batch: int = 256
    ):
        import httpx

        self.url, self.retries, self.backoff_s, self.max_batch = url, retries, backoff_s, max_batch
        self.client = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self.client.close()

    def _batch_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        out: list[list[Hit]] = []
        for start in range(0, len(queries), self.max_batch):
            out += self._request(list(queries[start : start + self.max_batch]), k)
        return out

    def _request(self, queries: list[str], k: int) -> list[list[Hit]]:
        import httpx

        payload = {"queries": queries, "topk": k, "return_scores": True}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self.client.post(self.url, json=payload)
            except httpx.TransportError as err:
                last = err
                continue
            if resp.status_code >= 500:
                last = RemoteRetrievalError(f"{self.url} answered {resp.status_code}: {resp.text[:300]}")
                continue
            if resp.status_code >= 400:
                raise RemoteRetrievalError(f"{self.url} refused the request ({resp.status_code}): {resp.text[:500]}")
            return self._parse(resp.json(), len(queries))
        raise RemoteRetrievalError(f"{self.url} failed after {self.retries + 1} attempts: {last}") from last

    def _parse(self, body: dict, n: int) -> list[list[Hit]]:
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list) or len(result) != n:
            raise RemoteRetrievalError(f"{self.url} answered without a 'result' list of {n} entries")
        out = []
        for row in result:
            hits = []
            for item in row:
                doc, score = (item["document"], float(item.get("score", 0.0))) if "document" in item else (item, 0.0)
                hits.append(Hit(passage_from_document(doc), score))
            out.append(hits)
        return out


def profile_retriever(cfg, encoder=None):
    """The retriever a profile's rollouts use (``retrieval.kind``): its dense or BM25 index folder,
    their hybrid, or the remote server at ``retrieval.remote_url``."""
    kind = cfg.retrieval.kind
    if kind == "remote":
        return RemoteRetriever(cfg.retrieval.remote_url, timeout_s=cfg.retrieval.timeout_s)
    dirs = {"dense": ["dense"], "bm25": ["bm25"], "hybrid": ["dense", "bm25"]}.get(kind)
    if dirs is None:
        raise ValueError(f"retrieval.kind must be dense, bm25, hybrid or remote, got {kind!r}")
    paths = [require(cfg.path("index", d, "meta.json"), stage_command("index", cfg)).parent for d in dirs]
    return retriever_from_dirs(paths, cfg.retrieval.rrf_k, encoder)
