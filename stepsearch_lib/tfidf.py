r"""The similarity behind the information gain: TF-IDF cosine of a retrieved document with each gold document.

The released code fits scikit-learn's ``TfidfVectorizer`` (defaults: lower-case, token pattern ``\b\w\w+\b``,
smooth idf, l2 norm) once per retrieved document on ``[doc] + golds`` and takes the clipped cosine
(`tfidf_cosine_reference`). Refitting per document is most of the reward's cost, so `tfidf_cosine_matrix` computes
the same numbers for every document at once in closed form; ``ig_fit = "pair"`` (one fit per (doc, gold) pair) has
its own pair of functions. Each fast form equals its reference to 1e-9 (tests/test_rewards.py, a property test in
tests/test_properties.py).

>>> round(float(tfidf_pair_cosine_matrix(["the eiffel tower"], ["eiffel tower paris"])[0, 0]), 4)
0.5031
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # sklearn TfidfVectorizer's default token pattern
_IDF_ONE = 1.0 + math.log(1.5)  # smooth idf of a term in one of the two fitted documents: ln(3/2) + 1


def tfidf_pair_cosine_reference(doc: str, gold: str) -> float:
    """``ig_fit = "pair"``: a TfidfVectorizer fitted on the pair (doc, gold), then their cosine (not what the
    released code does: see `tfidf_cosine_reference`). No token at all -> 0."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not _TOKEN.search(doc.lower()) or not _TOKEN.search(gold.lower()):
        return 0.0
    m = TfidfVectorizer().fit_transform([doc, gold])
    return float((m[0] @ m[1].T).toarray()[0, 0])


def _counts(docs: Sequence[str], golds: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw term counts (sklearn's lower-casing and token pattern) of docs and golds over one vocabulary."""
    vocab: dict[str, int] = {}
    bags = [Counter(_TOKEN.findall(text.lower())) for text in (*docs, *golds)]
    for bag in bags:
        for tok in bag:
            vocab.setdefault(tok, len(vocab))
    counts = np.zeros((len(bags), max(len(vocab), 1)))  # dense: a trajectory's docs share a few hundred terms
    for r, bag in enumerate(bags):
        if bag:
            counts[r, [vocab[t] for t in bag]] = list(bag.values())
    return counts[: len(docs)], counts[len(docs) :]


def tfidf_pair_cosine_matrix(docs: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """Vectorised `tfidf_pair_cosine_reference` for every (doc, gold) pair.

    Fitting on a pair gives idf 1 to a term in both documents and 1 + ln 1.5 to a term in one,
    so with raw counts A (docs) and B (golds):
        cos = (A B^T) / sqrt(w^2 |A|^2 - (w^2 - 1) A^2 1[B>0]^T) / sqrt(w^2 |B|^2 - (w^2 - 1) 1[A>0] (B^2)^T),  w = 1 + ln 1.5
    """
    if not docs or not golds:
        return np.zeros((len(docs), len(golds)))
    A, B = _counts(docs, golds)
    w2 = _IDF_ONE**2
    A2, B2 = A * A, B * B
    dot = A @ B.T
    norm_a = w2 * A2.sum(axis=1, keepdims=True) - (w2 - 1) * (A2 @ (B > 0).T)
    norm_b = w2 * B2.sum(axis=1)[None, :] - (w2 - 1) * ((A > 0) @ B2.T)
    denom = np.sqrt(np.clip(norm_a, 0, None)) * np.sqrt(np.clip(norm_b, 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, dot / denom, 0.0)


def tfidf_cosine_reference(doc: str, golds: Sequence[str]) -> np.ndarray:
    """As released (``ig_fit = "doc_and_golds"``): one TfidfVectorizer (sklearn defaults) fitted on
    [doc] + golds, the cosine of the doc with each gold, negatives clipped; an empty doc -> zeros.
    (The released code raises on a fit with no token at all; that gives zeros here.)"""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    if doc == "" or not golds:
        return np.zeros(len(golds))
    if not any(_TOKEN.search(t.lower()) for t in (doc, *golds)):
        return np.zeros(len(golds))
    m = TfidfVectorizer().fit_transform([doc, *golds])
    return np.maximum(cosine_similarity(m[0], m[1:]).ravel(), 0.0)


def tfidf_cosine_matrix(docs: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """Vectorised `tfidf_cosine_reference` for every doc at once (rows: docs, columns: golds).

    With n = 1 + |G| fitted documents and smooth idf, a term's idf only depends on whether the doc r holds it:
        idf0(t) = ln((1 + n) / (1 + df_G(t))) + 1          (t not in doc r)
        idf1(t) = ln((1 + n) / (2 + df_G(t))) + 1          (t in doc r)
        cos(r, i) = sum_t A_rt B_it idf1^2 / (sqrt(sum_t A_rt^2 idf1^2) sqrt(sum_t B_it^2 idf_r(t)^2))
    where the gold's norm under doc r's idf is  B^2 idf0^2 + 1[A_r > 0] B^2 (idf1^2 - idf0^2).
    """
    if not docs or not golds:
        return np.zeros((len(docs), len(golds)))
    A, B = _counts(docs, golds)
    n = 1 + len(golds)
    df_g = (B > 0).sum(axis=0)
    idf0_2 = (np.log((1 + n) / (1 + df_g)) + 1) ** 2
    idf1_2 = (np.log((1 + n) / (2 + df_g)) + 1) ** 2
    dot = (A * idf1_2) @ B.T
    norm_a = np.sqrt((A * A) @ idf1_2)[:, None]
    B2 = B * B
    norm_b = np.sqrt(np.clip((B2 @ idf0_2)[None, :] + (A > 0) @ (B2 * (idf1_2 - idf0_2)).T, 0, None))
    denom = norm_a * norm_b
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(denom > 0, dot / denom, 0.0)
    empty = np.array([d == "" for d in docs])
    sim[empty] = 0.0  # the released similarity returns zeros for an empty document
    return np.maximum(sim, 0.0)
