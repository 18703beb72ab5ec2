"""Scripted behaviours on real questions: the rewards rank them as designed; fast == reference."""

import numpy as np
import pytest

from stepsearch_lib.config import RewardConfig
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.rewards import gold_of, information_gain, score_trajectory
from stepsearch_lib.scripted import KINDS, score_rows, scripted_trajectories, token_layout


@pytest.fixture(scope="module")
def scripted(stepsearch_records, index_dirs):
    return scripted_trajectories(stepsearch_records[:10], load_retriever(index_dirs / "bm25"), topk=3, doc_words=40)


def test_fast_and_reference_information_gain_agree_on_real_trajectories(scripted, stepsearch_records):
    golds = {str(r["id"]): gold_of(r)["gold_docs"] for r in stepsearch_records}
    n = 0
    for t in scripted:
        fast = information_gain(t["step_docs"], golds[t["id"]], fast=True)
        ref = information_gain(t["step_docs"], golds[t["id"]], fast=False)
        assert np.allclose(fast, ref, atol=1e-6, rtol=0)
        n += len(fast)
    assert n > 20


def test_rewards_rank_the_behaviours(scripted, stepsearch_records):
    rows = score_rows(scripted, stepsearch_records[:10], RewardConfig())
    mean = {
        k: {c: np.mean([r[c] for r in rows if r["kind"] == k]) for c in rows[0] if c not in ("id", "kind")}
        for k in KINDS
    }
    assert mean["gold"]["return/full"] > max(
        mean[k]["return/full"] for k in ("off_topic", "repeated", "wrong_answer", "no_search")
    )
    assert mean["gold"]["info_gain"] > mean["off_topic"]["info_gain"]
    assert mean["repeated"]["redundancy"] > mean["gold"]["redundancy"]
    assert mean["wrong_answer"]["answer_f1"] < mean["gold"]["answer_f1"] == 1.0
    assert mean["no_search"]["return/full"] == mean["no_search"]["return/global_only"] == 1.0
    assert all(r["return/global_only"] == r["answer_f1"] for r in rows)


def test_token_layout_puts_rewards_on_search_ends(scripted, stepsearch_records, tokenizer):
    t = scripted[0]
    scored = score_trajectory(
        t["response"], t["queries"], t["step_docs"], reward_cfg=RewardConfig(), **gold_of(stepsearch_records[0])
    )
    layout = token_layout(t, tokenizer, scored)
    nonzero = [i for i, r in enumerate(layout["rewards"]) if r != 0]
    assert set(nonzero) <= set(layout["search_end_idx"]) | {len(layout["rewards"]) - 1}
    assert all(layout["loss_mask"][i] == 1 for i in layout["search_end_idx"])
    assert tokenizer.convert_tokens_to_string(layout["tokens"]) == t["response"]
