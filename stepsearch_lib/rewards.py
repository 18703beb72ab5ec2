"""StepSearch rewards: pure functions, faithful to the released recipe (../shared/reference/README.md).

Global (on the last response token), F1 rounded to 4 decimals as released (``reward.f1_decimals``):
    r_answer = F1(answer, golds)                       if the response ends with <answer>...</answer>
             = -1                                      otherwise (format gate)
    r_key    = (1/J) sum_j slot_j   where each query q, in order, scores s_j(q) = max_{g in G_j} F1(q, g)
               against every sub-question j and OVERWRITES slot_{j*} with s_{j*}(q), j* = argmax_j s_j(q)
               (first on ties; nothing when max_j s_j(q) = 0)      (`released` mode; `max`: slot_j = max_q s_j(q))
    r_final  = r_answer + 0.618 * r_key                (the gate's -1 is final: no key bonus, no step rewards)
Per search step t (on the last token of its </search>), only when the gate passes and gold docs exist:
    c_{t,i} = max_{d in D_t} cos_tfidf(norm(d), norm(g_i)), TF-IDF fitted on [d] + every gold doc (``ig_fit``)
    IG_t    = (1/I) sum_i max(0, c_{t,i} - M_{t-1,i});   M_{t,i} = max(M_{t-1,i}, c_{t,i})
    RP_t    = |{d in D_t : d retrieved at a step < t}| / |D_t|      (``redundancy_match``: same rank / any rank)
    r_t     = 1.6 * (IG_t - RP_t)                       (0.6 as written, 1 + 0.6 with the released in-place add)

Released bugs this module does NOT copy (each pinned by a test in tests/test_rewards.py):
* step drift: the released code finds the t-th ``</search>`` by re-encoding the decoded response prefix, which
  from the 2nd search on lands a few tokens early; we place r_t on the recorded index of the token that ends
  the t-th executed ``</search>`` (`place_rewards`).
* reward inside a warning: its regex can start at the literal ``<search>`` inside the invalid-action warning,
  so r_t lands on the warning's ``</search>``; our positions come from the rollout, never from text.
* the warning as a query: the key reward's regex counts the warning's literal ``<search> and </search>`` as a
  query "and"; our queries are the search blocks the policy generated (`rollout.Trajectory.queries`).

TRL-style wrappers at the bottom take ``(completions, **columns) -> list[float]``.

>>> round(f1_score("the Eiffel tower", "Eiffel Tower in Paris"), 3)
0.667
>>> search_key_reward(["Dai Jitao country", "China debt"], [["Dai Jitao nationality"], ["China debt US"]])
0.73335
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .protocol import doc_identity, ends_with_answer, extract_answer, extract_queries
from .tfidf import tfidf_cosine_matrix, tfidf_cosine_reference, tfidf_pair_cosine_matrix, tfidf_pair_cosine_reference

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
    r"""Exact match after SQuAD normalisation, best over the golds (0 without a prediction).

    $\mathrm{EM} = \max_g \mathbb 1[\mathrm{norm}(\hat a) = \mathrm{norm}(g)]$
    """
    return max((exact_match(prediction, g) for g in golds), default=0.0) if prediction is not None else 0.0


def answer_reward(response: str, golds: Sequence[str], format_penalty: float = -1.0) -> float:
    r"""F1 of the final answer, or ``format_penalty`` when the response does not end with an answer block.

    $r_\mathrm{answer} = \max_g F_1(\hat a, g)$ when the response ends with an answer block, else the format penalty (-1).
    """
    if not ends_with_answer(response):
        return format_penalty
    return best_f1(extract_answer(response), golds)


# ----------------------------------------------------------------------------- search-key reward


def _rounded(x: float, decimals: int) -> float:
    return round(x, decimals) if decimals >= 0 else x


def search_key_reward(
    queries: Sequence[str], gold_keys: Sequence[Sequence[str]], mode: str = "released", decimals: int = 4
) -> float:
    r"""How well the issued queries match the gold sub-question queries, in [0, 1].

    $\mathrm{slot}_{j^*} \leftarrow s_{j^*}(q)$ for $j^* = \arg\max_j s_j(q)$, $s_j(q) = \max_{g \in G_j} F_1(q, g)$; $r_\mathrm{key} = \frac1J \sum_j \mathrm{slot}_j$

    s_j(q) = max_{g in G_j} F1(q, g) (rounded to ``decimals``, -1 = exact). ``released`` (the released loop):
    one slot per sub-question, all 0; each query in order finds j* = argmax_j s_j(q) (the first on ties) and,
    if s_{j*}(q) > 0, OVERWRITES slot_{j*} with it (a later, worse query replaces an earlier, better one;
    other slots are untouched). ``max``: slot_j = max_q s_j(q). Reward = mean of the slots; 0 with no
    queries or no keys.

    >>> search_key_reward(["Dai Jitao country", "unrelated", "Dai Jitao"], [["Dai Jitao country"]])
    0.8
    """
    if mode not in ("released", "max"):
        raise ValueError(f"mode must be 'released' or 'max', got {mode!r}")
    if not queries or not gold_keys:
        return 0.0
    slots = [0.0] * len(gold_keys)
    for q in queries:
        scores = [_rounded(max((f1_score(q, k) for k in keys), default=0.0), decimals) for keys in gold_keys]
        if mode == "max":
            slots = [max(a, b) for a, b in zip(slots, scores)]
            continue
        best = max(range(len(scores)), key=lambda j: (scores[j], -j))  # highest score, first index on ties
        if scores[best] > 0:
            slots[best] = scores[best]  # overwrite: the latest matching query decides this sub-question
    return sum(slots) / len(slots)


# ----------------------------------------------------------------------------- step rewards


def information_gain(
    step_docs: Sequence[Sequence[str]],
    gold_docs: Sequence[str],
    fast: bool = True,
    normalize: bool = True,
    fit: str = "doc_and_golds",
) -> list[float]:
    r"""IG_t for every search step: mean over gold docs of the positive gain over the running max.

    $IG_t = \frac1{|G|} \sum_i \max(0, c_{t,i} - M_{t-1,i})$, $c_{t,i} = \max_{d \in D_t} \cos_\mathrm{TF-IDF}(d, g_i)$, $M_{t,i} = \max(M_{t-1,i}, c_{t,i})$

    ``normalize``: SQuAD-normalise both sides first (released). ``fit``: ``doc_and_golds`` (released: TF-IDF
    fitted on [doc] + all gold docs) or ``pair``. ``fast=False`` computes every cosine with scikit-learn.
    No gold docs -> every IG_t is 0 (and `combine_rewards` pays no step reward at all)."""
    if fit not in ("doc_and_golds", "pair"):
        raise ValueError(f"fit must be 'doc_and_golds' or 'pair', got {fit!r}")
    if not gold_docs:
        return [0.0] * len(step_docs)
    prep = normalize_answer if normalize else (lambda x: x)
    golds = [prep(g) for g in gold_docs]
    steps = [[prep(d) for d in docs] for docs in step_docs]
    flat = [d for docs in steps for d in docs]
    if fast:  # one similarity matrix for every step's documents at once, sliced per step below
        all_sim = (tfidf_cosine_matrix if fit == "doc_and_golds" else tfidf_pair_cosine_matrix)(flat, golds)
    elif fit == "doc_and_golds":
        all_sim = np.array([tfidf_cosine_reference(d, golds) for d in flat]).reshape(len(flat), len(golds))
    else:
        all_sim = np.array([[tfidf_pair_cosine_reference(d, g) for g in golds] for d in flat]).reshape(
            len(flat), len(golds)
        )
    memory = np.zeros(len(golds))
    gains, start = [], 0
    for docs in steps:
        if not docs:
            gains.append(0.0)
            continue
        c = all_sim[start : start + len(docs)].max(axis=0)  # c_{t,i}: best retrieved doc for gold doc i
        start += len(docs)
        gains.append(float(np.maximum(0.0, c - memory).mean()))  # IG_t = mean_i max(0, c_{t,i} - M_{t-1,i})
        memory = np.maximum(memory, c)  # M_{t,i} = max(M_{t-1,i}, c_{t,i})
    return gains


def redundancy_penalty(step_docs: Sequence[Sequence[str]], match: str = "any_rank") -> list[float]:
    r"""RP_t: share of step t's documents already seen (at an earlier step, or earlier in step t).

    $RP_t = |\{d \in D_t : d \text{ seen before}\}| / |D_t|$

    ``any_rank`` (the paper's intent): a document is its text (`protocol.doc_identity` drops the label the
    released splitter leaves). ``same_rank`` (released): a document is (rank, piece), which is what the
    released exact-string comparison of split pieces amounts to. Each repeat adds 1/|D_t|, in order.

    >>> redundancy_penalty([["a", "b"], ["b", "a"]], "any_rank"), redundancy_penalty([["a", "b"], ["b", "a"]], "same_rank")
    ([0.0, 1.0], [0.0, 0.0])
    """
    if match not in ("same_rank", "any_rank"):
        raise ValueError(f"match must be 'same_rank' or 'any_rank', got {match!r}")
    seen: set = set()
    out = []
    for docs in step_docs:
        penalty = 0.0
        for rank, d in enumerate(docs):
            key = (rank, d) if match == "same_rank" else doc_identity(d)
            if key in seen:
                penalty += 1 / len(docs)
            else:
                seen.add(key)
        out.append(penalty)
    return out


# ----------------------------------------------------------------------------- one trajectory


@dataclass
class TrajectoryRewards:
    answer_f1: float
    """F1 of the last answer block, also when the gate fails (the released ``answer_correct``; for the logs)."""
    answer_em: float
    format_ok: bool
    answer_reward: float
    """The gated answer reward: ``answer_f1`` when the gate passes, else the format penalty."""
    search_key: float
    info_gain: list[float] = field(default_factory=list)
    """IG_t as measured (also when the gate fails; then no step reward is paid)."""
    redundancy: list[float] = field(default_factory=list)
    step_rewards: list[float] = field(default_factory=list)
    """What is paid per executed search: 0 when the gate fails or the question has no gold docs."""
    final_reward: float = 0.0
    has_gold_docs: bool = True


def score_trajectory(
    response: str,
    queries: Sequence[str],
    step_docs: Sequence[Sequence[str]],
    answers: Sequence[str],
    gold_keys: Sequence[Sequence[str]],
    gold_docs: Sequence[str],
    reward_cfg,
    fast: bool = True,
) -> TrajectoryRewards:
    """Every reward of one trajectory under a `RewardConfig` (its ``name`` picks the components, its other
    fields the released / paper behaviours).

    ``queries``: every search the policy wrote (the key reward scores them); ``step_docs``: per executed
    search, the documents as `protocol.split_docs` returns them; ``gold_docs``: the gold paragraphs' text."""
    decimals = reward_cfg.f1_decimals
    pred = extract_answer(response)
    fmt = ends_with_answer(response)
    f1 = _rounded(best_f1(pred, answers), decimals)
    scored = TrajectoryRewards(
        answer_f1=f1,
        answer_em=best_em(pred, answers),
        format_ok=fmt,
        answer_reward=f1 if fmt else reward_cfg.format_penalty,
        search_key=search_key_reward(queries, gold_keys, reward_cfg.search_key_mode, decimals),
        info_gain=information_gain(step_docs, gold_docs, fast, reward_cfg.ig_normalize, reward_cfg.ig_fit),
        redundancy=redundancy_penalty(step_docs, reward_cfg.redundancy_match),
        has_gold_docs=bool(gold_docs),
    )
    return combine_rewards(scored, reward_cfg)


def combine_rewards(scored: TrajectoryRewards, reward_cfg) -> TrajectoryRewards:
    """Step and final rewards from already computed components under ``reward_cfg`` (cheap: lets
    one scoring serve every reward configuration)."""
    parts = REWARD_CONFIGS[reward_cfg.name]
    # the released code adds the scaled reward in place onto the unscaled one: effective 1 + 0.6
    scale = (1.0 + reward_cfg.step_scale) if reward_cfg.released_step_quirk else reward_cfg.step_scale
    # a failed gate is -1, full stop; a question without gold docs gets no step rewards (released)
    paid = scored.format_ok and scored.has_gold_docs
    # r_t = scale * (IG_t - RP_t), with the components the configuration turns off set to 0
    steps = [
        scale * ((g if parts["info_gain"] else 0.0) - (p if parts["redundancy"] else 0.0)) if paid else 0.0
        for g, p in zip(scored.info_gain, scored.redundancy)
    ]
    # r_final = r_answer + 0.618 * r_key (the format gate's penalty stands alone)
    bonus = reward_cfg.search_key_weight * scored.search_key if parts["search_key"] and scored.format_ok else 0.0
    return replace(scored, step_rewards=steps, final_reward=scored.answer_reward + bonus)


def place_rewards(
    n_tokens: int, search_end_idx: Sequence[int], step_rewards: Sequence[float], final_reward: float
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


def search_key_score(
    completions: Sequence[str], search_keys: Sequence[Sequence[Sequence[str]]], mode: str = "released", **_
) -> list[float]:
    """TRL-style: the search-key reward of each completion's ``<search>`` queries (text-parsed: a completion
    that holds forced warning text should pass its generated queries to `search_key_reward` instead)."""
    return [search_key_reward(extract_queries(c), k, mode) for c, k in zip(completions, search_keys)]


def gold_of(rec: dict) -> dict:
    """The reward-side gold of a StepSearch record: answers, gold queries, gold documents (each supporting
    paragraph's ``paragraph_text`` without its title, as the released reward compares them)."""
    return {
        "answers": [rec["final_answer"], *rec.get("answer_aliases", [])],
        "gold_keys": rec["sub_searchs"],
        "gold_docs": [d["paragraph_text"] for d in rec["sub_support_docs"]],
    }
