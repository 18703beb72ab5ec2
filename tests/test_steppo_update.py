"""A StePPO update on real rollouts of the tiny protocol model: placement, reference policy, loss goes down."""

import copy

import pytest
import torch

from stepsearch_lib.batching import build_batch
from stepsearch_lib.config import PPOConfig, RewardConfig, RolloutConfig
from stepsearch_lib.critic import ValueModel
from stepsearch_lib.models import LoraSpec, add_lora, build_tiny_model, token_logprobs
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.rewards import gold_of, score_trajectory
from stepsearch_lib.rollout import rollout
from stepsearch_lib.steppo import gae, masked_whiten, policy_loss, reference_logprobs, steppo_update


@pytest.fixture(scope="module")
def setup(protocol_model, tokenizer, stepsearch_records, index_dirs):
    actor = add_lora(copy.deepcopy(protocol_model), LoraSpec(r=8, alpha=16, dropout=0.0))
    records = stepsearch_records[:4]
    trajs = rollout(
        actor,
        tokenizer,
        [r["question"] for r in records],
        load_retriever(index_dirs / "bm25"),
        RolloutConfig(max_turns=2, max_new_tokens=64, batch_size=4, temperature=1.0, doc_words=20),
        topk=3,
        seed=1,
    )
    scored = [
        score_trajectory(t.response_text(tokenizer), t.queries, t.step_docs, reward_cfg=RewardConfig(), **gold_of(r))
        for t, r in zip(trajs, records)
    ]
    return actor, trajs, scored


def test_batch_places_rewards_at_absolute_search_ends(setup, tokenizer):
    _, trajs, scored = setup
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    for b, (t, s) in enumerate(zip(trajs, scored)):
        p = len(t.prompt_ids)
        nonzero = set(torch.nonzero(batch.token_rewards[b]).flatten().tolist())
        assert nonzero <= {p + i for i in t.search_end_idx} | {p + len(t.response_ids) - 1}
        assert batch.action_mask[b, :p].sum() == 0 and batch.action_mask[b, p:].sum() == sum(t.loss_mask)
        assert batch.token_rewards[b].sum().item() == pytest.approx(sum(s.step_rewards) + s.final_reward, abs=1e-5)
    global_only = build_batch(trajs, scored, tokenizer.pad_token_id, use_step_rewards=False)
    assert torch.count_nonzero(global_only.token_rewards).item() <= len(trajs)


def test_reference_is_the_actor_without_its_adapter(setup, tokenizer, protocol_model):
    actor, trajs, scored = setup
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    with torch.no_grad():
        for n, p in actor.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    ref = reference_logprobs(actor, batch)
    base = token_logprobs(protocol_model, batch.input_ids, batch.attention_mask, batch.action_mask)[0]
    assert torch.allclose(ref, base, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(
            token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask)[0], base, atol=1e-3
        )


def test_one_update_lowers_the_surrogate_loss_on_a_fixed_batch(setup, tokenizer):
    actor, trajs, scored = setup
    actor = copy.deepcopy(actor)
    critic = ValueModel(build_tiny_model(tokenizer, hidden_size=32, layers=1, seed=3))
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    ppo = PPOConfig(minibatch_size=4, ppo_epochs=4)
    with torch.no_grad():
        old = token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask)[0]
        values = critic(batch.input_ids, batch.attention_mask)
    adv, _ = gae(batch.token_rewards, values, batch.action_mask, 1.0, 1.0)
    adv = masked_whiten(adv, batch.action_mask) * batch.action_mask
    before, _ = policy_loss(old, old, adv, batch.action_mask, 0.2)
    opt_a = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-3)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-3)
    metrics = steppo_update(actor, critic, opt_a, opt_c, batch, ppo)
    with torch.no_grad():
        new = token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask)[0]
    after, _ = policy_loss(new, old, adv, batch.action_mask, 0.2)
    assert after.item() < before.item()
    assert {"losses/policy", "losses/value", "losses/approx_kl", "losses/clipfrac", "losses/entropy"} <= set(metrics)


def test_masked_logprobs_equal_full_logprobs(setup, tokenizer):
    actor, trajs, scored = setup
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    with torch.no_grad():
        full = actor(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        ref = torch.log_softmax(full, -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
        got, ent = token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask, with_entropy=True)
    m = batch.action_mask[:, 1:].bool()
    assert torch.allclose(got[:, 1:][m], ref[m], atol=1e-5) and (got[:, 1:][~m] == 0).all()
    assert (ent[:, 1:][m] > 0).all()


def _shared_critic(actor, seed=5):
    from stepsearch_lib.critic import add_critic_adapter

    add_critic_adapter(actor, LoraSpec(r=4, alpha=8, dropout=0.0), seed=seed)
    critic = ValueModel(actor, adapter="critic")
    with torch.no_grad():  # a non-trivial head and critic adapter, so values and their gradients are not zero
        critic.value_head.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
        for n, p in actor.named_parameters():
            if "lora_B.critic" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed))
    return critic


def test_shared_critic_is_a_second_adapter_on_the_actor_backbone(setup, tokenizer):
    actor, trajs, scored = setup
    actor = copy.deepcopy(actor)
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    with torch.no_grad():
        before = token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask)[0]
    critic = _shared_critic(actor)
    # no second backbone: the critic module owns only its value head
    assert {n for n, _ in critic.named_parameters()} == {"value_head.weight", "value_head.bias"}
    crit_params = critic.trainable_parameters()
    assert len(crit_params) == 2 + sum(".critic." in n for n, _ in actor.named_parameters())
    with torch.no_grad():  # the critic adapter does not leak into the policy
        assert torch.equal(token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask)[0], before)
    actor_params = [p for n, p in actor.named_parameters() if p.requires_grad and ".critic." not in n]
    snapshot = {id(p): p.detach().clone() for p in actor_params + crit_params}
    opt_a = torch.optim.AdamW(actor_params, lr=1e-3)
    opt_c = torch.optim.AdamW(crit_params, lr=1e-3)
    metrics = steppo_update(actor, critic, opt_a, opt_c, batch, PPOConfig(minibatch_size=2, grad_accum=2))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(p, snapshot[id(p)]) for p in actor_params)
    assert any(not torch.equal(p, snapshot[id(p)]) for p in crit_params)
    # peft's adapter switching flips requires_grad; both adapters must still be trainable afterwards
    assert all(p.requires_grad for p in actor_params + crit_params)
    assert actor.active_adapter == "default"


def test_shared_critic_gradients_survive_activation_checkpointing(setup, tokenizer):
    """Checkpointing recomputes the forward during backward: it must run under the critic's adapter."""
    actor, trajs, scored = setup
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    from torch.utils.checkpoint import CheckpointError

    grads = []
    for checkpointing, backward_inside in ((False, True), (True, True), (True, False)):
        a = copy.deepcopy(actor)
        critic = _shared_critic(a)
        if checkpointing:
            a.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        a.train()
        with critic.active():
            loss = critic(batch.input_ids, batch.attention_mask).pow(2).sum()
            if backward_inside:
                loss.backward()
        if not backward_inside:  # the hazard: recomputed under the actor's adapter (rank 8, not 4)
            with pytest.raises(CheckpointError, match="different metadata"):
                loss.backward()
            continue
        grads.append(torch.cat([p.grad.flatten() for p in critic.trainable_parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_a_critic_warmup_update_leaves_the_actor_alone(setup, tokenizer):
    actor, trajs, scored = setup
    actor = copy.deepcopy(actor)
    critic = ValueModel(build_tiny_model(tokenizer, hidden_size=32, layers=1, seed=3))
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    before = {n: p.detach().clone() for n, p in actor.named_parameters() if p.requires_grad}
    head = critic.value_head.weight.detach().clone()
    opt_a = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-2)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-2)
    metrics = steppo_update(actor, critic, opt_a, opt_c, batch, PPOConfig(minibatch_size=4), update_actor=False)
    assert all(torch.equal(p, before[n]) for n, p in actor.named_parameters() if p.requires_grad)
    assert not torch.equal(critic.value_head.weight, head)  # the critic learned
    assert metrics["losses/actor_updated"] == 0.0 and "critic/explained_variance" in metrics


def test_trimming_padding_leaves_the_update_unchanged(setup, tokenizer, monkeypatch):
    """Minibatches and no-grad chunks cut to their longest row give the same losses and weights as full width."""
    from stepsearch_lib import steppo
    from stepsearch_lib.batching import PPOBatch

    actor, trajs, scored = setup
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    lengths = batch.attention_mask.sum(1)
    assert lengths.min() < batch.input_ids.shape[1]  # the rollout left some padding to trim
    short = int(lengths.argmin())
    assert batch.select([short], trim=True).input_ids.shape == (1, int(lengths[short]))
    assert [len(c) for c in batch.length_sorted_chunks(3)] == [3, 1]
    assert lengths[batch.length_sorted_chunks(3)[0]].max() <= lengths[batch.length_sorted_chunks(3)[1]].min()
    results = []
    for trimmed in (True, False):
        a = copy.deepcopy(actor)
        critic = _shared_critic(a)
        if not trimmed:
            select = PPOBatch.select
            monkeypatch.setattr(PPOBatch, "select", lambda self, idx, trim=False: select(self, idx, False))
            monkeypatch.setattr(steppo, "NO_GRAD_CHUNK", len(batch))
        params = [p for n, p in a.named_parameters() if p.requires_grad and ".critic." not in n]
        out = steppo_update(
            a,
            critic,
            torch.optim.AdamW(params, lr=1e-3),
            torch.optim.AdamW(critic.trainable_parameters(), lr=1e-3),
            batch,
            PPOConfig(minibatch_size=2),
        )
        results.append((out, [p.detach().clone() for p in params]))
    (out_t, w_t), (out_f, w_f) = results
    for key in ("losses/policy", "losses/value", "losses/entropy", "losses/kl_ref"):
        assert out_t[key] == pytest.approx(out_f[key], abs=1e-5), key
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(w_t, w_f))
