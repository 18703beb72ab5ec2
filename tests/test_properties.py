"""Property-based tests (hypothesis): arbitrary model text never crashes the tag parser, rollout
post-processing or any reward; rewards stay within their documented bounds; no forced
information / warning token is ever trainable.

Default: 150 examples per property (40 / 60 for the two that run a real rollout or sklearn fit per
example). ``HYPOTHESIS_PROFILE=thorough`` (what ``make reliability`` sets for the slow run) raises
every one to 10,000.
"""

import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_stats import record

from stepsearch_lib.config import RewardConfig, RolloutConfig
from stepsearch_lib.protocol import (
    INVALID_ACTION_WARNING,
    LAST_SEARCH_WARNING,
    cut_at_stop,
    ends_with_answer,
    extract_answer,
    extract_queries,
    information_block,
    parse_action,
    split_docs,
)
from stepsearch_lib.rewards import (
    answer_reward,
    f1_score,
    information_gain,
    redundancy_penalty,
    score_trajectory,
    search_key_reward,
)
from stepsearch_lib.tfidf import tfidf_pair_cosine_matrix, tfidf_pair_cosine_reference

TAGS = ["<search>", "</search>", "<answer>", "</answer>", "<think>", "</think>", "<information>", "</information>"]
# model-like text: tags, unicode, whitespace, long runs
model_text = st.lists(
    st.one_of(
        st.sampled_from(TAGS),
        st.text(max_size=40),
        st.text(alphabet=string.ascii_letters + " ", min_size=1, max_size=30),
    ),
    max_size=30,
).map("".join)
words = st.text(alphabet=string.ascii_lowercase + " éß中", max_size=60)
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


@given(model_text)
def test_parser_never_crashes_and_returns_a_clean_action(text):
    record("parser: arbitrary texts")
    action = parse_action(text)
    assert action.kind in ("search", "answer", "invalid")
    if action.kind != "invalid":
        assert action.content and action.content == action.content.strip()
        assert f"<{action.kind}>" not in action.content
    cut, found = cut_at_stop(text)
    assert text.startswith(cut) and (not found or cut.endswith(("</search>", "</answer>")))
    extract_answer(text), extract_queries(text), ends_with_answer(text)


@given(st.integers(1, 3000))
def test_a_thousand_searches_and_very_long_text(n):
    record("parser: long / many-search texts")
    text = "<search> q </search>" * n + "x" * (n * 7) + "<answer"
    assert parse_action(text).kind == "search" and len(extract_queries(text)) == n
    assert not ends_with_answer(text)


@given(
    st.lists(
        st.tuples(
            st.text(alphabet=string.ascii_letters + " ()", min_size=1, max_size=20)
            .map(str.strip)
            .filter(
                lambda t: t
                and t.count("(") == t.count(")")
                and "()" not in t
                and all(t[:i].count("(") >= t[:i].count(")") for i in range(len(t)))
            ),
            st.text(alphabet=string.ascii_letters + " .,()", max_size=80),
        ),
        max_size=5,
    ),
    st.sampled_from(["released", "search_r1", "ours"]),
)
def test_rendered_documents_split_back(docs, style):
    """Every style's splitter returns each document's text; the released one keeps the next document's label
    on every piece but the last (what its reward compares)."""
    record("documents: render / split round trips")
    texts = [x.strip() for _, x in docs]
    if style == "released":  # the piece runs from after "##>" up to the next "<##": raw text + newline + next label
        texts = [f"{x}\nDoc {i + 2}".strip() if i + 1 < len(docs) else x.strip() for i, (_, x) in enumerate(docs)]
    assert split_docs(information_block(docs, style), style) == texts


@given(model_text, st.lists(words, min_size=1, max_size=3))
def test_answer_reward_bounds(response, golds):
    record("rewards: answer")
    r = answer_reward(response, golds)
    assert r == -1.0 or 0.0 <= r <= 1.0
    assert (r == -1.0) == (not ends_with_answer(response))


@given(
    st.lists(words, max_size=6), st.lists(st.lists(words, max_size=3), max_size=4), st.sampled_from(["released", "max"])
)
def test_search_key_reward_bounds(queries, keys, mode):
    record("rewards: search key")
    assert 0.0 <= search_key_reward(queries, keys, mode) <= 1.0 + 1e-12
    assert all(0.0 <= f1_score(q, k) <= 1.0 for q in queries for ks in keys for k in ks)


@given(st.lists(st.lists(words, max_size=4), max_size=6), st.lists(words, max_size=4))
def test_step_reward_bounds(step_docs, gold_docs):
    record("rewards: information gain / redundancy")
    ig, rp = information_gain(step_docs, gold_docs), redundancy_penalty(step_docs)
    assert len(ig) == len(rp) == len(step_docs)
    assert all(0.0 <= x <= 1.0 + 1e-9 for x in ig) and all(0.0 <= x <= 1.0 for x in rp)
    assert sum(ig) <= 1.0 + 1e-9  # gains over a running max telescope to at most the best similarity


@settings(max_examples=10_000 if THOROUGH else 60)
@given(st.lists(words, min_size=1, max_size=3), st.lists(words, min_size=1, max_size=3))
def test_fast_tfidf_equals_the_reference(docs, golds):
    record("rewards: fast vs reference TF-IDF pairs")
    fast = tfidf_pair_cosine_matrix(docs, golds)
    ref = np.array([[tfidf_pair_cosine_reference(d, g) for g in golds] for d in docs])
    np.testing.assert_allclose(fast, ref, atol=1e-9)


@given(
    model_text,
    st.lists(words, max_size=4),
    st.lists(st.lists(words, max_size=3), max_size=4),
    st.sampled_from(["full", "no_info_gain", "no_redundancy", "no_search_key", "no_step", "global_only"]),
)
def test_combined_rewards_stay_bounded(response, queries, step_docs, name):
    record("rewards: whole trajectories")
    s = score_trajectory(response, queries, step_docs, ["x"], [["x"]], ["x y"], RewardConfig(name=name))
    assert -1.0 <= s.final_reward <= 1.0 + 0.618 + 1e-9
    assert all(-1.6 - 1e-9 <= r <= 1.6 + 1e-9 for r in s.step_rewards)  # released scale 1 + 0.6


# ----------------------------------------------------------------------------- rollout post-processing

FORCED = ("<information>", "</information>", "<warning>", "</warning>")


@pytest.fixture(scope="module")
def bm25(index_dirs):
    from stepsearch_lib.retrieval import load_retriever

    return load_retriever(index_dirs / "bm25")


@settings(max_examples=10_000 if THOROUGH else 40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(
        st.lists(model_text.filter(lambda t: not any(f in t for f in FORCED)), min_size=6, max_size=6),
        min_size=1,
        max_size=3,
    )
)
def test_rollout_post_processing_never_makes_forced_tokens_trainable(turns, tokenizer, bm25, monkeypatch):
    """The model's turns are scripted (hypothesis draws the arbitrary text a real model could emit);
    everything after generation -- parsing, retrieval, forced blocks, masks -- is the real rollout."""
    import stepsearch_lib.rollout as R

    calls = iter(range(10_000))

    def scripted_generate(model, tok, sequences, *a, **k):  # token ids of each turn, cut at its stop like the engine
        i = next(calls)
        return [
            tok(cut_at_stop(turns[j % len(turns)][i % 6])[0], add_special_tokens=False)["input_ids"]
            for j in range(len(sequences))
        ]

    monkeypatch.setattr(R, "hf_generate_turn", scripted_generate)

    class NoModel:
        training = False
        device = "cpu"

        def eval(self):
            return self

        def train(self, mode=True):
            return self

    trajs = R.rollout(
        NoModel(),
        tokenizer,
        [f"question {i}" for i in range(len(turns))],
        bm25,
        RolloutConfig(max_turns=3, max_new_tokens=16, batch_size=len(turns), doc_words=8, engine="hf"),
        topk=2,
    )
    record("rollout: post-processed episodes", len(trajs))
    for t in trajs:
        assert len(t.loss_mask) == len(t.response_ids)
        trainable = tokenizer.decode([x for x, m in zip(t.response_ids, t.loss_mask) if m])
        forced = tokenizer.decode([x for x, m in zip(t.response_ids, t.loss_mask) if not m])
        assert not any(f in trainable for f in FORCED)  # no information / warning token is trainable
        assert forced.count("<information>") == t.num_searches == len(t.step_docs) <= 3
        assert len(t.queries) >= t.num_searches  # a search in the answering round is scored, not executed
        assert all(t.loss_mask[i] == 1 for i in t.search_end_idx)
        assert forced.replace(INVALID_ACTION_WARNING, "").replace(LAST_SEARCH_WARNING, "").count("<warning>") == 0
