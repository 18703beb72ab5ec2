"""Batched multi-turn rollouts on real questions and a real index: masks, search ends, determinism."""

import pytest
import torch

from stepsearch_lib.config import RewardConfig, RolloutConfig
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.rewards import place_rewards, score_trajectory
from stepsearch_lib.rollout import rollout


@pytest.fixture(scope="module")
def bm25(index_dirs):
    return load_retriever(index_dirs / "bm25")


@pytest.fixture(scope="module")
def trajectories(protocol_model, tokenizer, stepsearch_records, bm25):
    questions = [r["question"] for r in stepsearch_records[:8]]
    return rollout(
        protocol_model,
        tokenizer,
        questions,
        bm25,
        RolloutConfig(max_turns=3, max_new_tokens=64, batch_size=4, doc_words=20),
        topk=3,
        greedy=True,
    )


def _runs(mask):
    """Maximal runs of equal mask values: (value, start, end)."""
    runs, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], start, i))
            start = i
    return runs


def test_the_taught_model_searches(trajectories):
    assert sum(bool(t.queries) for t in trajectories) >= len(trajectories) // 2


def test_no_information_token_is_trainable(trajectories, tokenizer):
    for t in trajectories:
        assert len(t.response_ids) == len(t.loss_mask)
        for value, start, end in _runs(t.loss_mask):
            text = tokenizer.decode(t.response_ids[start:end])
            if value == 1:
                assert "<information>" not in text and "<warning>" not in text
            else:
                assert text.startswith(("\n\n<information>", "\n<warning>")), text[:40]
        n_info = tokenizer.decode(t.response_ids).count("<information>")
        assert n_info == len(t.queries) == len(t.step_docs) == len(t.step_doc_ids) == len(t.search_end_idx)
        assert len(t.queries) <= 3


def test_every_step_reward_sits_on_a_search_end(trajectories, tokenizer, stepsearch_records):
    for t, rec in zip(trajectories, stepsearch_records):
        response = t.response_text(tokenizer)
        r = score_trajectory(
            response,
            t.queries,
            t.step_docs,
            [rec["final_answer"]],
            rec["sub_searchs"],
            [d["title"] + " " + d["paragraph_text"] for d in rec["sub_support_docs"]],
            RewardConfig(),
        )
        rewards = place_rewards(len(t.response_ids), t.search_end_idx, r.step_rewards, r.final_reward)
        nonzero = {i for i in range(len(rewards) - 1) if rewards[i] != 0}
        assert nonzero <= set(t.search_end_idx)
        for idx in t.search_end_idx:
            assert t.loss_mask[idx] == 1
            assert tokenizer.decode(t.response_ids[: idx + 1]).endswith("</search>")


def test_sampled_rollouts_are_reproducible_and_leave_global_rng_alone(
    protocol_model, tokenizer, stepsearch_records, bm25
):
    questions = [r["question"] for r in stepsearch_records[:3]]
    state = torch.random.get_rng_state()
    a = rollout(
        protocol_model, tokenizer, questions, bm25, RolloutConfig(max_turns=2, max_new_tokens=24, batch_size=3), seed=5
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    b = rollout(
        protocol_model, tokenizer, questions, bm25, RolloutConfig(max_turns=2, max_new_tokens=24, batch_size=3), seed=5
    )
    assert [t.response_ids for t in a] == [t.response_ids for t in b]


def test_untaught_model_gets_warnings_and_no_answer(tokenizer, stepsearch_records, bm25):
    from stepsearch_lib.models import build_tiny_model

    t = rollout(
        build_tiny_model(tokenizer),
        tokenizer,
        [stepsearch_records[0]["question"]],
        bm25,
        RolloutConfig(max_turns=1, max_new_tokens=8),
        greedy=True,
    )[0]
    assert t.answer is None and t.invalid_turns == 2 and t.done
    assert tokenizer.decode(t.response_ids).count("<warning>") == 2


def test_rollout_through_the_remote_server_matches_local(server, protocol_model, tokenizer, stepsearch_records, bm25):
    from stepsearch_lib.retrieval import RemoteRetriever

    questions = [r["question"] for r in stepsearch_records[:4]]
    settings = RolloutConfig(max_turns=2, max_new_tokens=40, batch_size=4, doc_words=20)
    local = rollout(protocol_model, tokenizer, questions, bm25, settings, greedy=True)
    remote = rollout(protocol_model, tokenizer, questions, RemoteRetriever(f"{server}/retrieve"), settings, greedy=True)
    assert [t.response_ids for t in local] == [t.response_ids for t in remote]
    assert [t.step_doc_ids for t in local] == [t.step_doc_ids for t in remote]


def test_generation_copy_merges_only_the_actor_adapter():
    """The sampling copy (LoRA merged, own dtype) computes the actor's logits; the shared critic's
    adapter on the same backbone is left out, and the training policy is untouched."""
    from stepsearch_lib.config import get_config
    from stepsearch_lib.rollout import generation_copy
    from stepsearch_lib.train import build_models

    actor, _critic, tok, *_ = build_models(get_config("smoke"))
    actor.eval()  # no LoRA dropout
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in actor.named_parameters():
            if "lora_" in n:  # both adapters non-trivial (B starts at zero)
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    trainable = {n for n, p in actor.named_parameters() if p.requires_grad}
    ids = torch.tensor([tok("Who wrote Hamlet? <search> Hamlet author </search>")["input_ids"]])
    with torch.no_grad():
        ref = actor(input_ids=ids).logits
        same = generation_copy(actor, "float32")(input_ids=ids).logits
        low = generation_copy(actor, "bfloat16")(input_ids=ids).logits.float()
        assert {n for n, p in actor.named_parameters() if p.requires_grad} == trainable
        with actor.disable_adapter():  # (peft re-freezes inactive adapters on exit: checked above, not below)
            base = actor(input_ids=ids).logits
    torch.testing.assert_close(same, ref, atol=1e-5, rtol=1e-5)
    assert (ref - base).abs().max() > 1e-3  # the adapter matters, so the equality above is not vacuous
    assert (low - ref).abs().max() < 0.05 * ref.abs().max()
    assert any("critic" in n for n, _ in actor.named_parameters())


def test_rollout_with_a_bfloat16_sampling_copy(protocol_model, tokenizer, stepsearch_records, bm25):
    questions = [r["question"] for r in stepsearch_records[:4]]
    trajs = rollout(
        protocol_model,
        tokenizer,
        questions,
        bm25,
        RolloutConfig(max_turns=2, max_new_tokens=48, batch_size=4, doc_words=20, generation_dtype="bfloat16"),
        topk=3,
        greedy=True,
    )
    assert all(p.dtype == torch.float32 for p in protocol_model.parameters())
    for t in trajs:
        assert len(t.response_ids) == len(t.loss_mask) and sum(t.loss_mask) > 0
        assert tokenizer.decode(t.response_ids).count("<information>") == len(t.queries)
