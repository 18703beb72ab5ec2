"""The `released` / `paper` fidelity presets: config, rendering, turn logic, observation cap, PPO statistics,
learning-rate warm-up. Expected values are written by hand from the released code (Zillwang/StepSearch @ 43215ba:
search_r1/llm_agent/generation.py, verl/trainer/ppo/core_algos.py, verl/utils/torch_functional.py)."""

from dataclasses import replace

import pytest
import torch

from stepsearch_lib.config import PPOConfig, RolloutConfig, get_config
from stepsearch_lib.profiles import FIDELITY_PRESETS
from stepsearch_lib.protocol import (
    INVALID_ACTION_WARNING as INVALID,
)
from stepsearch_lib.protocol import (
    LAST_SEARCH_WARNING as LAST,
)
from stepsearch_lib.protocol import (
    information_block,
    render_docs,
    split_docs,
)
from stepsearch_lib.rollout import Turn, plan_turn
from stepsearch_lib.steppo import advantages_and_returns, masked_whiten, warmup_factor

# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_every_profile_defaults_to_the_released_preset(profile):
    cfg = get_config(profile)
    assert cfg.reward.fidelity == "released"
    for key, value in FIDELITY_PRESETS["released"].items():
        if profile == "smoke" and key.endswith("warmup_frac"):
            continue  # smoke turns warm-up off (1-2 updates)
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key


def test_the_paper_preset_sets_defaults_that_single_fields_still_override():
    cfg = get_config("smoke", {"reward.fidelity": "paper"})
    assert (cfg.reward.redundancy_match, cfg.ppo.stats_tokens, cfg.rollout.doc_render) == (
        "any_rank",
        "generated",
        "ours",
    )
    mixed = get_config("smoke", {"reward.fidelity": "paper", "ppo.stats_tokens": "response"})
    assert (mixed.reward.redundancy_match, mixed.ppo.stats_tokens) == ("any_rank", "response")
    assert get_config("smoke").rollout.max_turns == 2  # the profile still applies over the preset


@pytest.mark.parametrize(
    "key,value",
    [
        ("reward.fidelity", "exact"),
        ("rollout.doc_render", "html"),
        ("reward.redundancy_match", "rank"),
        ("ppo.stats_tokens", "all"),
    ],
)
def test_an_unknown_choice_is_an_error_naming_the_field(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        get_config("smoke", {key: value})


# ----------------------------------------------------------------------------- rendering

DOCS = [("Dai Jitao", "A Chinese journalist."), ("China", "A country."), ("Debt", "Money owed.")]


@pytest.mark.parametrize(
    "style,rendered",
    [
        (
            "released",
            "Doc 1<## Title: Dai Jitao ##> A Chinese journalist.\nDoc 2<## Title: China ##> A country.\n"
            "Doc 3<## Title: Debt ##> Money owed.\n",
        ),
        (
            "search_r1",
            'Doc 1(Title: "Dai Jitao") A Chinese journalist.\nDoc 2(Title: "China") A country.\n'
            'Doc 3(Title: "Debt") Money owed.\n',
        ),
        (
            "ours",
            "Doc 1(Title: Dai Jitao) A Chinese journalist.\nDoc 2(Title: China) A country.\n"
            "Doc 3(Title: Debt) Money owed.\n",
        ),
    ],
)
def test_render_docs(style, rendered):
    assert render_docs(DOCS, style) == rendered


@pytest.mark.parametrize(
    "style,block,pieces",
    [
        (
            "released",
            "\n\n<information> Doc 1<## Title: Dai Jitao ##> A Chinese journalist.\nDoc 2<## Title: China ##> "
            "A country.\nDoc 3<## Title: Debt ##> Money owed. </information>\n\n",
            ["A Chinese journalist.\nDoc 2", "A country.\nDoc 3", "Money owed."],
        ),
        (
            "search_r1",
            '\n\n<information>Doc 1(Title: "Dai Jitao") A Chinese journalist.\nDoc 2(Title: "China") A country.\n'
            'Doc 3(Title: "Debt") Money owed.</information>\n\n',
            ["A Chinese journalist.", "A country.", "Money owed."],
        ),
        (
            "ours",
            "\n\n<information>Doc 1(Title: Dai Jitao) A Chinese journalist.\nDoc 2(Title: China) A country.\n"
            "Doc 3(Title: Debt) Money owed.\n</information>\n\n",
            ["A Chinese journalist.", "A country.", "Money owed."],
        ),
    ],
)
def test_information_block_and_its_splitter(style, block, pieces):
    assert information_block(DOCS, style) == block
    assert split_docs(block, style) == pieces
    assert split_docs(block + LAST, style) == pieces  # the last-round warning after the block is not a document


def test_a_block_cut_by_the_observation_cap_splits_to_the_cut():
    block = information_block(DOCS, "released")
    cut = block[: block.index("Money") + 5]
    assert split_docs(cut, "released") == ["A Chinese journalist.\nDoc 2", "A country.\nDoc 3", "Money"]


# ----------------------------------------------------------------------------- turn logic


def S(q, key=None, warning="", done=False):
    return Turn("search", q, q if key is None else key, warning, done)


# (turn text, round, searches done) -> Turn, max_turns = 2: rounds 0 and 1 search, round 2 answers
RELEASED_TURNS = [
    ("search in round 0", "<search> q </search>", 0, 0, S("q")),
    ("the last search round is warned", "<search> q </search>", 1, 1, S("q", warning=LAST)),
    ("warned by round, not by count", "<search> q </search>", 1, 0, S("q", warning=LAST)),
    ("final round: recorded, not executed", "<search> q </search>", 2, 2, Turn("search", None, "q", "", True)),
    ("invalid", "no tags here", 0, 0, Turn("invalid", warning=INVALID)),
    ("invalid in the last search round", "no tags here", 1, 0, Turn("invalid", warning=INVALID + LAST)),
    ("invalid in the final round ends it", "no tags here", 2, 1, Turn("invalid", done=True)),
    ("empty search is a search", "<search></search>", 0, 0, S("")),
    ("nested search", "<search> a <search> b </search>", 0, 0, S("a <search> b", key="a  b")),
    ("empty answer is an answer", "<answer></answer>", 0, 0, Turn("answer", done=True)),
    ("answer in the final round", "<answer> x </answer>", 2, 2, Turn("answer", done=True)),
    ("unclosed search is invalid", "<search> q", 0, 0, Turn("invalid", warning=INVALID)),
]

STRICT_TURNS = [
    ("search", "<search> q </search>", 0, 0, S("q")),
    ("the max_turns-th search is warned", "<search> q </search>", 1, 1, S("q", warning=LAST)),
    ("after an invalid turn a 2nd search in round 2", "<search> q </search>", 2, 1, S("q", warning=LAST)),
    ("a search over the limit is refused", "<search> q </search>", 2, 2, Turn("invalid", warning=LAST, done=True)),
    ("empty search is invalid", "<search></search>", 0, 0, Turn("invalid", warning=INVALID)),
    ("nested search is invalid", "<search> a <search> b </search>", 0, 0, Turn("invalid", warning=INVALID)),
    ("answer", "<answer> x </answer>", 1, 0, Turn("answer", done=True)),
]


@pytest.mark.parametrize("case,text,round_idx,done,expected", RELEASED_TURNS, ids=[c[0] for c in RELEASED_TURNS])
def test_released_turn_logic(case, text, round_idx, done, expected):
    assert plan_turn(text, round_idx, done, max_turns=2, turn_logic="released") == expected


@pytest.mark.parametrize("case,text,round_idx,done,expected", STRICT_TURNS, ids=[c[0] for c in STRICT_TURNS])
def test_strict_turn_logic(case, text, round_idx, done, expected):
    assert plan_turn(text, round_idx, done, max_turns=2, turn_logic="strict") == expected


def test_released_rollouts_always_get_an_answering_round(protocol_model, tokenizer, stepsearch_records, index_dirs):
    """Real rollouts (the taught tiny model, which memorised two-search episodes; BM25). With max_turns = 1 it
    searches, is warned, and in the answering round writes a second search: scored, not executed. With
    max_turns = 3 it searches twice and answers."""
    from stepsearch_lib.retrieval import load_retriever
    from stepsearch_lib.rollout import rollout

    questions, bm25 = [r["question"] for r in stepsearch_records[:8]], load_retriever(index_dirs / "bm25")
    settings = RolloutConfig(max_new_tokens=64, batch_size=4, doc_words=20)
    short = rollout(protocol_model, tokenizer, questions, bm25, replace(settings, max_turns=1), greedy=True)
    for t in short:
        text = t.response_text(tokenizer)
        assert t.num_searches <= 1 and text.count("<information>") == t.num_searches == len(t.step_docs)
        assert len(t.queries) >= t.num_searches and t.done
        if t.num_searches == 1:
            assert "I cannot search any more" in text  # round max_turns is warned
    assert any(len(t.queries) == 2 and t.num_searches == 1 for t in short)  # the final-round search
    long = rollout(protocol_model, tokenizer, questions, bm25, replace(settings, max_turns=3), greedy=True)
    assert sum(t.answer is not None for t in long) >= 6
    assert all(t.num_searches <= 3 for t in long)


def test_the_observation_cap_cuts_every_forced_run(protocol_model, tokenizer, stepsearch_records, index_dirs):
    from stepsearch_lib.retrieval import load_retriever
    from stepsearch_lib.rollout import rollout

    questions = [r["question"] for r in stepsearch_records[:4]]
    bm25 = load_retriever(index_dirs / "bm25")
    settings = RolloutConfig(max_turns=2, max_new_tokens=64, batch_size=4, doc_words=40, max_obs_tokens=24)
    capped = rollout(protocol_model, tokenizer, questions, bm25, settings, greedy=True)
    assert any(t.num_searches for t in capped)
    for t in capped:
        # every maximal run of forced tokens is one observation, at most 24 tokens
        run, longest = 0, 0
        for m in t.loss_mask + [1]:
            run = run + 1 if m == 0 else 0
            longest = max(longest, run)
        assert longest <= 24
        for docs in t.step_docs:  # the pieces come from the cut text: at most the first doc, cut
            assert len(docs) <= 1


# ----------------------------------------------------------------------------- PPO statistics and warm-up


def test_whitening_uses_the_unbiased_variance():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    var = (1.5**2 * 2 + 0.5**2 * 2) / 3  # sum of squared deviations / (n - 1)
    assert torch.allclose(masked_whiten(x, torch.ones_like(x)), (x - 2.5) / (var + 1e-8) ** 0.5)


def test_released_statistics_include_the_document_tokens():
    """One row: generated, generated, 2 document tokens, generated (last). Rewards: 1 on the last token.
    gamma = lambda = 1, V = 0, beta = 0: A = [1, 1, 1, 1, 1] on every response token before whitening.
    Give V = [0, 0, 2, 2, 0]: A = 1 - V = [1, 1, -1, -1, 1]."""
    gen = torch.tensor([[1.0, 1, 0, 0, 1]])
    resp = torch.ones_like(gen)
    rewards = torch.tensor([[0.0, 0, 0, 0, 1]])
    values = torch.tensor([[0.0, 0, 2, 2, 0]])
    zeros = torch.zeros_like(gen)
    ppo = PPOConfig(kl_beta=0.0)
    a_resp, r_resp, _ = advantages_and_returns(rewards, zeros, zeros, values, gen, resp, ppo)
    raw = torch.tensor([[1.0, 1, -1, -1, 1]])  # statistics over all five: mean 0.2, unbiased var 1.2
    assert torch.allclose(a_resp, (raw - 0.2) / (1.2 + 1e-8) ** 0.5 * gen)
    assert torch.allclose(r_resp, torch.ones_like(gen))  # R = A + V on every response token
    a_gen, r_gen, _ = advantages_and_returns(rewards, zeros, zeros, values, gen, gen, ppo)
    # generated only: GAE skips the document tokens, A = 1 on each; mean 1, var 0 -> whitened 0
    assert torch.allclose(a_gen, torch.zeros_like(gen), atol=1e-3)
    assert torch.allclose(r_gen, gen)


@pytest.mark.parametrize(
    "total,frac,expected",
    [
        (8, 0.285, [0.0, 0.5, 1.0, 1.0]),  # W = int(2.28) = 2
        (100, 0.285, [0.0, 1 / 28, 2 / 28, 3 / 28]),  # W = 28
        (1120, 0.05, [0.0, 1 / 56, 2 / 56, 3 / 56]),  # the released critic: W = 56
        (8, 0.05, [0.0, 1.0, 1.0, 1.0]),  # W = 0: verl's schedule still gives update 0 a factor of 0
        (8, 0.0, [1.0, 1.0, 1.0, 1.0]),  # no warm-up
    ],
)
def test_learning_rate_warmup(total, frac, expected):
    assert [warmup_factor(u, total, frac) for u in range(4)] == pytest.approx(expected)
