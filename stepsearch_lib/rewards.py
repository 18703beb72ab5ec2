"""StepSearch rewards: pure functions, faithful to the released recipe (../shared/reference).

Global (on the last response token):
    r_answer = F1(answer, golds)                       if the response ends with <answer>...</answer>
             = -1                                      otherwise (format gate)
    r_key    = mean_j max_{s in queries, g in G_j} F1(s, g)   (`max` mode; `released` mode: see below)
    r_final  = r_answer + 0.618 * r_key                (the gate's -1 is final: no key bonus)
Per search step t (on the last token of its </search>):
    c_{t,i} = max_{d in D_t} cos_tfidf(d, g_i);  IG_t = mean_i max(0, c_{t,i} - M_{t-1,i});  M_{t,i} = max(M_{t-1,i}, c_{t,i})
    RP_t    = |{d in D_t : d retrieved at a step < t}| / |D_t|
    r_t     = 0.6 * (IG_t - RP_t)                       (x 1.6 with the released in-place-add quirk)

TRL-style wrappers at the bottom take ``(completions, **columns) -> list[float]``.

>>> round(f1_score("the Eiffel tower", "Eiffel Tower in Paris"), 3)
0.667
>>> search_key_reward(["Dai Jitao country", "China debt"], [["Dai Jitao nationality"], ["China debt US"]], mode="max")
0.7333333333333334
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .protocol import ends_with_answer, extract_answer

REWARD_CONFIGS = {
    "full": {"info_gain": True, "redundancy": True, "search_key": True},
    "no_info_gain": {"info_gain": False, "redundancy": True, "search_key": True},
    "no_redundancy": {"info_gain": True, "redundancy": False, "search_key": True},
    "no_search_key": {"info_gain": True, "redundancy": True, "search_key": False},
    "no_step": {"info_gain": False, "redundancy": False, "search_key": True},
    "global_only": {"info_gain": False, "redundancy": False, "search_key": False},
}
"""Reward configurations used by training and the ablations (notebook 03)."""


# ----------------------------------------------------------------------------- answer F1 / EM


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 after SQuAD normalisation."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def best_f1(prediction: str | None, golds: Sequence[str]) -> float:
    return max((f1_score(prediction, g) for g in golds), default=0.0) if prediction is not None else 0.0


def best_em(prediction: str | None, golds: Sequence[str]) -> float:
    return max((exact_match(prediction, g) for g in golds), default=0.0) if prediction is not None else 0.0


def answer_reward(response: str, golds: Sequence[str], format_penalty: float = -1.0) -> float:
    """F1 of the final answer, or ``format_penalty`` when the response does not end with an answer block."""
    if not ends_with_answer(response):
        return format_penalty
    return best_f1(extract_answer(response), golds)


# ----------------------------------------------------------------------------- search-key reward


def search_key_reward(queries: Sequence[str], gold_keys: Sequence[Sequence[str]], mode: str = "released") -> float:
    """Mean over sub-questions of how well the issued queries match that sub-question's gold queries.

    ``max``: each sub-question takes the best F1 of any issued query against any of its gold queries.
    ``released``: as the released loop is written, each query *overwrites* every sub-question's
    score with its own best F1, so only the last query counts (the quirk, kept for faithfulness).
    No queries or no gold keys -> 0.
    """
    if mode not in ("released", "max"):
        raise ValueError(f"mode must be 'released' or 'max', got {mode!r}")
    if not queries or not gold_keys:
        return 0.0
    scores = [0.0] * len(gold_keys)
    for q in queries:
        for j, keys in enumerate(gold_keys):
            s = max((f1_score(q, k) for k in keys), default=0.0)
            scores[j] = s if mode == "released" else max(scores[j], s)
    return sum(scores) / len(scores)


# ----------------------------------------------------------------------------- TF-IDF similarity

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # sklearn TfidfVectorizer's default token pattern
_IDF_ONE = 1.0 + math.log(1.5)  # smooth idf of a term in one of the two fitted documents: ln(3/2) + 1


def tfidf_pair_cosine_reference(doc: str, gold: str) -> float:
    """As released: a TfidfVectorizer fitted on the pair (doc, gold), then their cosine.
    A pair with no token at all (sklearn's "empty vocabulary") has similarity 0."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not _TOKEN.search(doc.lower()) or not _TOKEN.search(gold.lower()):
        return 0.0
    m = TfidfVectorizer().fit_transform([doc, gold])
    return float((m[0] @ m[1].T).toarray()[0, 0])


def tfidf_pair_cosine_matrix(docs: Sequence[str], golds: Sequence[str]) -> np.ndarray:
    """Vectorised equivalent of `tfidf_pair_cosine_reference` for every (doc, gold) pair.

    Fitting on a pair gives idf 1 to a term in both documents and 1 + ln 1.5 to a term in one,
    so with raw counts A (docs) and B (golds):
        cos = (A B^T) / sqrt(w^2 |A|^2 - (w^2 - 1) A^2 1[B>0]^T) / sqrt(w^2 |B|^2 - (w^2 - 1) 1[A>0] (B^2)^T),  w = 1 + ln 1.5
    """
    if not docs or not golds:
        return np.zeros((len(docs), len(golds)))
    vocab: dict[str, int] = {}
    bags = [Counter(_TOKEN.findall(text.lower())) for text in (*docs, *golds)]
    for bag in bags:
        for tok in bag:
            vocab.setdefault(tok, len(vocab))
    counts = np.zeros((len(bags), len(vocab)))  # dense: a step's few docs share a vocabulary of a few hundred terms
    for r, bag in enumerate(bags):
        counts[r, [vocab[t] for t in bag]] = list(bag.values())
    A, B = counts[:len(docs)], counts[len(docs):]
    w2 = _IDF_ONE ** 2
    A2, B2 = A * A, B * B
    dot = A @ B.T
    norm_a = w2 * A2.sum(axis=1, keepdims=True) - (w2 - 1) * (A2 @ (B > 0).T)
    norm_b = w2 * B2.sum(axis=1)[None, :] - (w2 - 1) * ((A > 0) @ B2.T)
    denom = np.sqrt(np.clip(norm_a, 0, None)) * np.sqrt(np.clip(norm_b, 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, dot / denom, 0.0)


# ----------------------------------------------------------------------------- step rewards


def information_gain(step_docs: Sequence[Sequence[str]], gold_docs: Sequence[str], fast: bool = True) -> list[float]:
    """IG_t for every search step: mean over gold docs of the positive gain over the running max."""
    if not gold_docs:
        return [0.0] * len(step_docs)
    memory = np.zeros(len(gold_docs))
    if fast:  # one similarity matrix for every step's documents at once, sliced per step below
        flat = [d for docs in step_docs for d in docs]
        all_sim = tfidf_pair_cosine_matrix(flat, gold_docs)
    gains, start = [], 0
    for docs in step_docs:
        if not docs:
            gains.append(0.0)
            continue
        if fast:
            sim = all_sim[start:start + len(docs)]
            start += len(docs)
        else:
            sim = np.array([[tfidf_pair_cosine_reference(d, g) for g in gold_docs] for d in docs])
        c = sim.max(axis=0)  # c_{t,i}: best retrieved doc for gold doc i
        gains.append(float(np.maximum(0.0, c - memory).mean()))  # IG_t = mean_i max(0, c_{t,i} - M_{t-1,i})
        memory = np.maximum(memory, c)  # M_{t,i} = max(M_{t-1,i}, c_{t,i})
    return gains


def redundancy_penalty(step_docs: Sequence[Sequence[str]]) -> list[float]:
    """RP_t: share of step t's documents (exact text) already retrieved at an earlier step."""
    seen: set[str] = set()
    out = []
    for docs in step_docs:
        out.append(sum(d in seen for d in docs) / len(docs) if docs else 0.0)
        seen.update(docs)
    return out


# ----------------------------------------------------------------------------- one trajectory


@dataclass
class TrajectoryRewards:
    answer_f1: float
    answer_em: float
    format_ok: bool
    answer_reward: float
    search_key: float
    info_gain: list[float] = field(default_factory=list)
    redundancy: list[float] = field(default_factory=list)
    step_rewards: list[float] = field(default_factory=list)
    final_reward: float = 0.0


def score_trajectory(response: str, queries: Sequence[str], step_docs: Sequence[Sequence[str]], answers: Sequence[str],
                     gold_keys: Sequence[Sequence[str]], gold_docs: Sequence[str], reward_cfg, fast: bool = True
                     ) -> TrajectoryRewards:
    """Every reward of one trajectory under a `RewardConfig` (its ``name`` picks the components)."""
    pred = extract_answer(response)
    fmt = ends_with_answer(response)
    scored = TrajectoryRewards(
        answer_f1=best_f1(pred, answers) if fmt else 0.0, answer_em=best_em(pred, answers) if fmt else 0.0,
        format_ok=fmt, answer_reward=answer_reward(response, answers, reward_cfg.format_penalty),
        search_key=search_key_reward(queries, gold_keys, reward_cfg.search_key_mode),
        info_gain=information_gain(step_docs, gold_docs, fast), redundancy=redundancy_penalty(step_docs))
    return combine_rewards(scored, reward_cfg)


def combine_rewards(scored: TrajectoryRewards, reward_cfg) -> TrajectoryRewards:
    """Step and final rewards from already computed components under ``reward_cfg`` (cheap: lets
    one scoring serve every reward configuration)."""
    from dataclasses import replace

    parts = REWARD_CONFIGS[reward_cfg.name]
    # the released code adds the scaled reward in place onto the unscaled one: effective 1 + 0.6
    scale = (1.0 + reward_cfg.step_scale) if reward_cfg.released_step_quirk else reward_cfg.step_scale
    # r_t = scale * (IG_t - RP_t), with the components the configuration turns off set to 0
    steps = [scale * ((g if parts["info_gain"] else 0.0) - (p if parts["redundancy"] else 0.0))
             for g, p in zip(scored.info_gain, scored.redundancy)]
    # r_final = r_answer + 0.618 * r_key (the format gate's penalty stands alone)
    bonus = reward_cfg.search_key_weight * scored.search_key if parts["search_key"] and scored.format_ok else 0.0
    return replace(scored, step_rewards=steps, final_reward=scored.answer_reward + bonus)


def place_rewards(n_tokens: int, search_end_idx: Sequence[int], step_rewards: Sequence[float], final_reward: float
                  ) -> np.ndarray:
    """Token-level rewards: r_t on the last token of the t-th </search>, the final reward on the last token."""
    if len(search_end_idx) != len(step_rewards):
        raise ValueError(f"{len(search_end_idx)} search ends but {len(step_rewards)} step rewards")
    out = np.zeros(n_tokens, dtype=np.float64)
    for idx, r in zip(search_end_idx, step_rewards):
        if not 0 <= idx < n_tokens:
            raise IndexError(f"search end index {idx} outside a response of {n_tokens} tokens")
        out[idx] += r
    if n_tokens:
        out[-1] += final_reward
    return out


# ----------------------------------------------------------------------------- TRL-style wrappers


def answer_f1_reward(completions: Sequence[str], golden_answers: Sequence[Sequence[str]], **_) -> list[float]:
    """TRL-style: format-gated answer F1 per completion.

    >>> answer_f1_reward(["<answer> Paris </answer>", "Paris"], golden_answers=[["Paris"], ["Paris"]])
    [1.0, -1.0]
    """
    return [answer_reward(c, g) for c, g in zip(completions, golden_answers)]


def search_key_score(completions: Sequence[str], search_keys: Sequence[Sequence[Sequence[str]]], mode: str = "released",
                     **_) -> list[float]:
    """TRL-style: the search-key reward of each completion's ``<search>`` queries."""
    from .protocol import extract_queries

    return [search_key_reward(extract_queries(c), k, mode) for c, k in zip(completions, search_keys)]
