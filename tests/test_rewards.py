"""Table-driven reward cases (TRL style), TF-IDF fast vs reference, placement."""

import math

import numpy as np
import pytest

from stepsearch_lib.config import RewardConfig
from stepsearch_lib.rewards import (
    REWARD_CONFIGS,
    answer_f1_reward,
    answer_reward,
    best_em,
    best_f1,
    f1_score,
    information_gain,
    normalize_answer,
    place_rewards,
    redundancy_penalty,
    score_trajectory,
    search_key_reward,
    search_key_score,
)
from stepsearch_lib.tfidf import (
    tfidf_cosine_matrix,
    tfidf_cosine_reference,
    tfidf_pair_cosine_matrix,
    tfidf_pair_cosine_reference,
)

NORMALIZE = [("The  Eiffel Tower!", "eiffel tower"), ("an apple, a pear", "apple pear"), ("U.S.A.", "usa"), ("", "")]


@pytest.mark.parametrize("text,expected", NORMALIZE)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


F1_CASES = [
    ("Paris", ["Paris"], 1.0, 1.0),
    ("paris.", ["Paris", "City of Light"], 1.0, 1.0),
    ("the city of Paris", ["Paris"], 0.5, 0.0),
    ("London", ["Paris"], 0.0, 0.0),
    ("Light", ["Paris", "City of Light"], 0.5, 0.0),  # 1 of 3 gold tokens: P=1, R=1/3
    (None, ["Paris"], 0.0, 0.0),
]


@pytest.mark.parametrize("pred,golds,f1,em", F1_CASES)
def test_f1_em_max_over_golds(pred, golds, f1, em):
    assert best_f1(pred, golds) == pytest.approx(f1) and best_em(pred, golds) == em


GATE_CASES = [
    ("<think>x</think><answer> Paris </answer>", 1.0),
    ("<answer> Paris </answer>\n  ", 1.0),
    ("<answer> Paris </answer> because", -1.0),  # text after the answer
    ("Paris", -1.0),  # no answer block
    ("<answer> Paris", -1.0),  # unclosed
    ("<answer> London </answer><answer> Paris </answer>", 1.0),  # several: the last one counts
    ("<answer></answer>", 0.0),
]


@pytest.mark.parametrize("response,expected", GATE_CASES)
def test_format_gate(response, expected):
    assert answer_reward(response, ["Paris"]) == expected


# search-key reward, hand-computed from the released loop (qa_step.step_search_keys_match): every query goes to
# its best-matching sub-question (strict >, so the first on ties; none when its best F1 is 0) and OVERWRITES
# that slot; F1 is rounded to 4 decimals. "dai jitao country" vs "dai jitao nationality": P = R = 2/3 -> 0.6667;
# "china debt" vs "china debt us": P = 1, R = 2/3 -> 0.8; "dai jitao" vs "dai jitao country" -> 0.8.
KEY_CASES = [
    # id, queries, gold keys, released, max
    (
        "worked example (reference README)",
        ["Dai Jitao country", "China debt"],
        [["Dai Jitao nationality"], ["China debt US"]],
        (0.6667 + 0.8) / 2,
        (0.6667 + 0.8) / 2,
    ),
    (
        "each query fills its own slot",
        ["Dai Jitao country", "China debt"],
        [["Dai Jitao country"], ["China debt"]],
        1.0,
        1.0,
    ),
    (
        "order does not matter across slots",
        ["China debt", "Dai Jitao country"],
        [["Dai Jitao country"], ["China debt"]],
        1.0,
        1.0,
    ),
    ("tie: the first sub-question", ["China"], [["China debt"], ["China US"]], 0.6667 / 2, 0.6667),
    ("zero-F1 query records nothing", ["Dai Jitao country", "unrelated words"], [["Dai Jitao country"]], 1.0, 1.0),
    ("a later, worse query overwrites", ["Dai Jitao country", "Dai Jitao"], [["Dai Jitao country"]], 0.8, 1.0),
    ("a later, better query overwrites", ["Dai Jitao", "Dai Jitao country"], [["Dai Jitao country"]], 1.0, 1.0),
    ("best of a slot's acceptable keys", ["x y"], [["x z", "x y"]], 1.0, 1.0),
    ("rounded to 4 decimals", ["alpha"], [["alpha beta gamma beta gamma"]], 0.3333, 0.3333),
    ("empty query", [""], [["a b"]], 0.0, 0.0),
    ("no queries", [], [["a b"]], 0.0, 0.0),
    ("no keys", ["a b"], [], 0.0, 0.0),
]


@pytest.mark.parametrize("case,queries,keys,released,maxed", KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_search_key_reward(case, queries, keys, released, maxed):
    assert search_key_reward(queries, keys, "released") == pytest.approx(released, abs=1e-12)
    assert search_key_reward(queries, keys, "max") == pytest.approx(maxed, abs=1e-12)


def test_search_key_reward_exact_f1_when_asked():
    assert search_key_reward(["alpha"], [["alpha beta gamma beta gamma"]], decimals=-1) == pytest.approx(1 / 3)


def _released_key_loop_literal(queries, keys):
    """The released loop transcribed as plain Python (strict >, best group -1 when no match)."""
    slots = {i: 0 for i in range(len(keys))}
    for q in queries:
        best, group = 0, -1
        for i, k in enumerate(keys):
            s = max(round(f1_score(q, x), 4) for x in k)
            if s > best:
                best, group = s, i
        slots[group] = best
    return sum(v for i, v in slots.items() if i >= 0) / len(keys)


def test_released_mode_equals_the_literal_loop_on_real_queries(stepsearch_records):
    """Real gold queries of one record issued against the keys of others, in many orders."""
    import itertools

    for a, b in itertools.islice(itertools.permutations(stepsearch_records[:8], 2), 40):
        keys = a["sub_searchs"]
        queries = [q[0] for q in a["sub_searchs"]] + [q[-1] for q in b["sub_searchs"]] + ["unrelated"]
        for order in (queries, queries[::-1]):
            assert search_key_reward(order, keys) == pytest.approx(_released_key_loop_literal(order, keys), abs=1e-12)


# information gain, by hand. sklearn's smooth idf: idf(t) = ln((1 + n) / (1 + df(t))) + 1, rows l2-normalised.
# (a) gold "xx yy", doc "xx zz", fit on [doc, gold] (n = 2): idf(xx) = 1, idf(yy) = idf(zz) = w = 1 + ln 1.5,
#     cos = 1 / (1 + w^2) -- with one gold doc the released fit IS the pair fit.
# (b) golds ["xx yy", "zz ww"], doc "xx zz", fit on [doc] + golds (n = 3): idf(xx) = idf(zz) = a = 1 + ln(4/3),
#     idf(yy) = idf(ww) = b = 1 + ln 2; cos(doc, g) = a^2 / (a sqrt2 sqrt(a^2 + b^2)) for both golds.
#     Fitted per pair instead, each cosine is case (a)'s 1 / (1 + w^2).
_W = 1 + math.log(1.5)
_A, _B = 1 + math.log(4 / 3), 1 + math.log(2)
IG_CASES = [
    # id, step docs, gold docs, fit, IG per step
    ("one gold", [["xx zz"]], ["xx yy"], "doc_and_golds", [1 / (1 + _W**2)]),
    (
        "fit on doc + all golds",
        [["xx zz"]],
        ["xx yy", "zz ww"],
        "doc_and_golds",
        [_A / (math.sqrt(2) * math.hypot(_A, _B))],
    ),
    ("fit per pair", [["xx zz"]], ["xx yy", "zz ww"], "pair", [1 / (1 + _W**2)]),
    ("normalised: case, punctuation, articles", [["The XX, zz!"]], ["xx yy"], "doc_and_golds", [1 / (1 + _W**2)]),
    (
        "a repeat gains nothing, a full match gains the rest",
        [["xx zz"], ["xx zz"], ["xx yy"]],
        ["xx yy"],
        "doc_and_golds",
        [1 / (1 + _W**2), 0.0, 1 - 1 / (1 + _W**2)],
    ),
    ("c = max over the step's docs", [["qq rr", "xx yy"]], ["xx yy"], "doc_and_golds", [1.0]),
    ("empty step", [[], ["xx yy"]], ["xx yy"], "doc_and_golds", [0.0, 1.0]),
    ("empty doc", [[""]], ["xx yy"], "doc_and_golds", [0.0]),
    ("no gold docs", [["xx yy"]], [], "doc_and_golds", [0.0]),
]


@pytest.mark.parametrize("case,steps,golds,fit,expected", IG_CASES, ids=[c[0] for c in IG_CASES])
def test_information_gain_by_hand(case, steps, golds, fit, expected):
    for fast in (True, False):
        assert information_gain(steps, golds, fast=fast, fit=fit) == pytest.approx(expected, abs=1e-12)


def test_information_gain_without_normalisation_keeps_the_article():
    """Not normalised, "the" stays a term of the doc (sklearn lower-cases but keeps it), lowering the cosine."""
    raw = information_gain([["The XX, zz!"]], ["xx yy"], normalize=False)[0]
    assert raw < information_gain([["The XX, zz!"]], ["xx yy"], normalize=True)[0] - 0.05


# redundancy on the pieces the released splitter returns (each but the last ends in the next doc's label)
RP_CASES = [
    # id, step docs, same_rank (released), any_rank (paper)
    (
        "repeat at the same rank",
        [["A\nDoc 2", "B\nDoc 3", "C"], ["A\nDoc 2", "D\nDoc 3", "E"]],
        [0.0, 1 / 3],
        [0.0, 1 / 3],
    ),
    (
        "repeat at another rank",
        [["A\nDoc 2", "B\nDoc 3", "C"], ["D\nDoc 2", "A\nDoc 3", "E"]],
        [0.0, 0.0],
        [0.0, 1 / 3],
    ),
    ("the last rank again", [["A\nDoc 2", "B\nDoc 3", "C"], ["D\nDoc 2", "E\nDoc 3", "C"]], [0.0, 1 / 3], [0.0, 1 / 3]),
    (
        "all three back, shuffled",
        [["A\nDoc 2", "B\nDoc 3", "C"], ["C\nDoc 2", "A\nDoc 3", "B"]],
        [0.0, 0.0],
        [0.0, 1.0],
    ),
    ("a step repeats itself", [["A\nDoc 2", "B\nDoc 3", "C"]] * 3, [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]),
    ("empty step", [[], ["A"]], [0.0, 0.0], [0.0, 0.0]),
]


@pytest.mark.parametrize("case,steps,same_rank,any_rank", RP_CASES, ids=[c[0] for c in RP_CASES])
def test_redundancy_by_hand(case, steps, same_rank, any_rank):
    assert redundancy_penalty(steps, "same_rank") == pytest.approx(same_rank)
    assert redundancy_penalty(steps, "any_rank") == pytest.approx(any_rank)


def test_same_rank_is_the_released_exact_string_comparison_of_split_pieces(scripted):
    """On real rendered blocks, (rank, piece) matching equals the released loop: exact piece strings."""

    def literal(step_docs):
        seen, out = set(), []
        for docs in step_docs:
            out.append(0.0)
            for d in docs:
                if d in seen:
                    out[-1] += 1 / len(docs)
                else:
                    seen.add(d)
        return out

    for t in scripted:
        assert redundancy_penalty(t["step_docs"], "same_rank") == pytest.approx(literal(t["step_docs"]))


@pytest.fixture(scope="module")
def scripted(stepsearch_records, index_dirs):
    from stepsearch_lib.retrieval import load_retriever
    from stepsearch_lib.scripted import scripted_trajectories

    return scripted_trajectories(stepsearch_records[:10], load_retriever(index_dirs / "bm25"), topk=3, doc_words=40)


def test_fast_tfidf_equals_reference_on_edge_cases():
    docs = ["Hello, world! hello", "", "a", "The The the", "naïve café 1999 1999", "x y z"]
    golds = ["hello there world", "café naïve", "", "1999 is a year", "z y x"]
    fast = tfidf_pair_cosine_matrix(docs, golds)
    ref = np.array([[tfidf_pair_cosine_reference(d, g) for g in golds] for d in docs])
    assert np.abs(fast - ref).max() < 1e-12
    fast = tfidf_cosine_matrix(docs, golds)
    ref = np.array([tfidf_cosine_reference(d, golds) for d in docs])
    assert np.abs(fast - ref).max() < 1e-12


def test_placement_on_search_ends_and_last_token():
    r = place_rewards(10, [2, 6], [0.3, -0.2], 1.5)
    assert r.tolist() == [0, 0, 0.3, 0, 0, 0, -0.2, 0, 0, 1.5]
    with pytest.raises(ValueError):
        place_rewards(10, [2], [0.1, 0.2], 0.0)
    with pytest.raises(IndexError):
        place_rewards(5, [7], [0.1], 0.0)


SCORE = dict(
    response="<search> Dai Jitao country </search> ... <answer> China </answer>",
    queries=["Dai Jitao country", "Dai Jitao country"],
    step_docs=[["Dai Jitao was a Chinese journalist"], ["Dai Jitao was a Chinese journalist"]],
    answers=["China"],
    gold_keys=[["Dai Jitao country"]],
    gold_docs=["Dai Jitao was a Chinese journalist"],
)


@pytest.mark.parametrize("name", list(REWARD_CONFIGS))
def test_reward_configurations(name):
    """IG = [1, 0] (identical doc, then a repeat), RP = [0, 1]; released scale 1 + 0.6."""
    r = score_trajectory(**SCORE, reward_cfg=RewardConfig(name=name))
    parts = REWARD_CONFIGS[name]
    ig0 = 1.0 if parts["info_gain"] else 0.0
    rp1 = 1.0 if parts["redundancy"] else 0.0
    assert r.step_rewards == pytest.approx([1.6 * ig0, 1.6 * (0.0 - rp1)])
    assert r.final_reward == pytest.approx(1.0 + (0.618 if parts["search_key"] else 0.0))
    assert (r.answer_f1, r.answer_em, r.format_ok, r.search_key) == (1.0, 1.0, True, 1.0)


def test_step_scale_as_written_without_the_in_place_add():
    r = score_trajectory(**SCORE, reward_cfg=RewardConfig(released_step_quirk=False))
    assert r.step_rewards == pytest.approx([0.6, -0.6])


# the whole result per situation (released preset), by hand: F1, 0.618 x key, 1.6 x (IG - RP) per executed search
GATED_CASES = [
    # id, response, gold docs, step rewards, final reward
    ("gate passes", "<answer> China </answer>", SCORE["gold_docs"], [1.6, -1.6], 1.618),
    (
        "gate fails: -1 and nothing else",
        "<search> Dai Jitao country </search> never answers",
        SCORE["gold_docs"],
        [0.0, 0.0],
        -1.0,
    ),
    ("text after the answer fails the gate", "<answer> China </answer> because", SCORE["gold_docs"], [0.0, 0.0], -1.0),
    ("no gold docs: no step rewards", "<answer> China </answer>", [], [0.0, 0.0], 1.618),
    (
        "wrong but well-formed answer keeps the key bonus",
        "<answer> Japan </answer>",
        SCORE["gold_docs"],
        [1.6, -1.6],
        0.618,
    ),
]


@pytest.mark.parametrize("case,response,gold_docs,steps,final", GATED_CASES, ids=[c[0] for c in GATED_CASES])
def test_gate_and_gold_docs_decide_what_is_paid(case, response, gold_docs, steps, final):
    r = score_trajectory(**{**SCORE, "response": response, "gold_docs": gold_docs}, reward_cfg=RewardConfig())
    assert r.step_rewards == pytest.approx(steps) and r.final_reward == pytest.approx(final)


def test_searching_well_and_never_answering_scores_below_a_wrong_answer():
    """Before the fix the 1.6 scale paid a gate failure its step rewards: -1 + 1.6 > 0 for a good search."""
    good_search = score_trajectory(
        **{**SCORE, "response": "<search> x </search>", "step_docs": SCORE["step_docs"][:1]}, reward_cfg=RewardConfig()
    )
    wrong = score_trajectory(
        **{**SCORE, "response": "<answer> Japan </answer>", "queries": [], "step_docs": []}, reward_cfg=RewardConfig()
    )
    assert (
        sum(good_search.step_rewards) + good_search.final_reward == -1.0 < sum(wrong.step_rewards) + wrong.final_reward
    )
    assert good_search.info_gain == pytest.approx([1.0])  # still measured, for the logs


def test_answer_f1_is_rounded_to_4_decimals_as_released():
    r = score_trajectory(
        **{**SCORE, "response": "<answer> alpha </answer>", "answers": ["alpha beta gamma beta gamma"]},
        reward_cfg=RewardConfig(),
    )
    assert r.answer_f1 == 0.3333 and r.final_reward == pytest.approx(0.3333 + 0.618)


# ----------------------------------------------------------------------------- released bugs not copied


def _episode(tokenizer, pieces):
    from stepsearch_lib.demonstrations import tokenize_pieces

    return tokenize_pieces("", pieces, tokenizer)


def test_not_copied_step_drift_every_step_reward_sits_on_its_own_search_end(tokenizer):
    """Released: from the 2nd search on, re-encoding the decoded prefix puts r_t a few tokens early.
    Ours: r_t on the recorded last token of the t-th </search>, however much forced text came before."""
    from stepsearch_lib.protocol import information_block

    docs = [("T", "some text.")]
    pieces = [
        ("<plan> a </plan>\n<search> first </search>", True),
        (information_block(docs, "released"), False),
        ("<search> second </search>", True),
        (information_block(docs, "released"), False),
        ("<search> third </search>", True),
        (information_block(docs, "released"), False),
        ("<answer> x </answer>", True),
    ]
    ids, mask, ends = _episode(tokenizer, pieces)
    rewards = place_rewards(len(ids), ends, [0.1, 0.2, 0.3], 1.0)
    for idx, r in zip(ends, [0.1, 0.2, 0.3]):
        assert rewards[idx] == r and mask[idx] == 1 and tokenizer.decode(ids[: idx + 1]).endswith("</search>")
    assert len(ends) == 3


def test_not_copied_reward_inside_a_warning(tokenizer):
    """Released: its regex may start at the warning's literal <search>, so r_t lands on the warning's </search>.
    Ours: the warning holds that literal, yet the one step reward sits on the generated </search>."""
    from stepsearch_lib.protocol import INVALID_ACTION_WARNING, information_block

    assert "<search> and </search>" in INVALID_ACTION_WARNING  # the trap is really there
    pieces = [
        ("I am not sure.", True),
        (INVALID_ACTION_WARNING, False),
        ("<search> real query </search>", True),
        (information_block([("T", "text.")], "released"), False),
        ("<answer> x </answer>", True),
    ]
    ids, mask, ends = _episode(tokenizer, pieces)
    assert len(ends) == 1
    warning_end = len(_episode(tokenizer, pieces[:2])[0])
    assert ends[0] > warning_end and mask[ends[0]] == 1


def test_not_copied_the_warning_text_as_a_query():
    """Released: the key reward re-parses the response text and scores the warning's "and" as a query.
    Ours: the queries are the search blocks the policy generated (`plan_turn`'s key_query per turn)."""
    from stepsearch_lib.protocol import INVALID_ACTION_WARNING, extract_queries
    from stepsearch_lib.rollout import plan_turn

    turns = ["I am not sure.", "<search> Dai Jitao country </search>"]
    queries = [q for i, t in enumerate(turns) if (q := plan_turn(t, i, 0, 5).key_query) is not None]
    assert queries == ["Dai Jitao country"]
    text = turns[0] + INVALID_ACTION_WARNING + turns[1]
    assert extract_queries(text)[0] == "and"  # what a text parse of the same response would score
    assert search_key_reward(queries, [["Dai Jitao country"], ["and"]]) == 0.5


def test_trl_style_wrappers():
    comps = ["<search> Dai Jitao country </search><answer> China </answer>", "China"]
    assert answer_f1_reward(comps, golden_answers=[["China"], ["China"]]) == [1.0, -1.0]
    assert search_key_score(comps, search_keys=[[["Dai Jitao country"]], [["x"]]]) == [1.0, 0.0]
    assert f1_score("a b", "b a") == 1.0


def test_a_failed_gate_keeps_the_real_f1_for_the_logs():
    r = score_trajectory(**{**SCORE, "response": "<answer> China </answer> and more"}, reward_cfg=RewardConfig())
    assert (r.format_ok, r.answer_f1, r.answer_reward, r.final_reward) == (False, 1.0, -1.0, -1.0)
