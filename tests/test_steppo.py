"""StePPO pieces against hand-written loops and hand-computed tensors."""

import math

import pytest
import torch

from stepsearch_lib.steppo import (
    gae,
    kl_penalised_rewards,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)


def _gae_by_hand(rewards, values, mask, gamma, lam):
    """The plainest loop: compact each row to its trainable tokens (carrying masked rewards back)."""
    adv_out = [[0.0] * len(r) for r in rewards]
    for b, (rs, vs, ms) in enumerate(zip(rewards, values, mask)):
        idx = [t for t, m in enumerate(ms) if m]
        carried = [0.0] * len(rs)
        pending = 0.0
        for t in reversed(range(len(rs))):
            if ms[t]:
                carried[t] = rs[t] + pending
                pending = 0.0
            else:
                pending += rs[t]
        last_adv, next_v = 0.0, 0.0
        for t in reversed(idx):
            delta = carried[t] + gamma * next_v - vs[t]
            last_adv = delta + gamma * lam * last_adv
            adv_out[b][t] = last_adv
            next_v = vs[t]
    return adv_out


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_matches_a_hand_written_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 12, generator=g, dtype=torch.float64)
    values = torch.randn(3, 12, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 12)
    mask[0, 3:7] = 0  # an information block
    mask[1, 10:] = 0  # padding
    mask[2, 0:2] = 0
    adv, ret = gae(rewards, values, mask, gamma, lam)
    expected = torch.tensor(
        _gae_by_hand(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam), dtype=torch.float64
    )
    assert torch.allclose(adv, expected, atol=1e-12)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-12)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.3, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 0.4, 0.3]])
    mask = torch.tensor([[1, 1, 0, 0, 1]])
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[1.3 - 0.5, 1.3 - 0.2, 0.0, 0.0, 1.0 - 0.3]]))


def test_kl_in_reward_only_on_trainable_tokens():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    lp, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    shaped, kl = kl_penalised_rewards(r, lp, ref, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0]]))
    assert torch.allclose(shaped, torch.tensor([[-0.05, 0.0, 1.0]]))


def test_policy_loss_by_hand():
    lp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = policy_loss(lp, old, adv, mask, clip=0.2)
    # token 0: min(1.5*1, 1.2*1) = 1.2; token 1: min(0.5*-1, 0.8*-1) = -0.8; mean = 0.2
    assert loss.item() == pytest.approx(-0.2)
    assert stats["losses/clipfrac"] == 1.0


def test_value_loss_by_hand():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    loss = value_loss(v, old, ret, torch.ones(1, 2), clip=0.5)
    # token 0: max((1-0)^2, (0.5-0)^2) = 1; token 1: max(4, 4) = 4 -> 0.5 * mean = 1.25
    assert loss.item() == pytest.approx(1.25)


def test_whiten_and_entropy():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_mean(w**2, mask).item() == pytest.approx(2 / 3, abs=1e-4)  # unbiased variance: (n - 1) / n


def test_whitening_does_not_blow_up_a_batch_without_signal():
    """All returns equal: what varies is KL / critic noise of ~1e-4. Plain whitening scales it to unit size;
    the floor (ppo.whiten_min_std) leaves it near zero. Real spread is whitened as before."""
    noise = 1e-4 * torch.tensor([[1.0, -2.0, 0.5, 1.5, -1.0]])
    mask = torch.ones_like(noise)
    assert masked_mean(masked_whiten(-1.0 + noise, mask) ** 2, mask).item() > 0.5
    assert masked_whiten(-1.0 + noise, mask, min_std=0.05).abs().max().item() < 0.01
    signal = torch.tensor([[1.0, 0.0, -1.0, 0.5, 2.0]])
    torch.testing.assert_close(masked_whiten(signal, mask, min_std=0.05), masked_whiten(signal, mask))


EV_CASES = [  # values, returns, explained variance by hand
    ([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], 0.0),  # a constant critic explains nothing
    ([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], 1.0),
    ([2.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], 1 - 0.1875 / 1.25),  # R - V = [-1, 0, 0, 0]: Var 0.1875; Var(R) 1.25
]


@pytest.mark.parametrize("values,returns,expected", EV_CASES)
def test_explained_variance(values, returns, expected):
    from stepsearch_lib.steppo import explained_variance

    v, r = torch.tensor([values]), torch.tensor([returns])
    assert explained_variance(v, r, torch.ones_like(r)) == pytest.approx(
        1 - float(torch.var(r - v, unbiased=False) / torch.var(r, unbiased=False))
    )
    assert explained_variance(v, r, torch.ones_like(r)) == pytest.approx(expected)


def test_log_probabilities_use_a_float32_head_on_a_bfloat16_model(tokenizer):
    from stepsearch_lib.models import build_tiny_model, token_logprobs

    model = build_tiny_model(tokenizer, seed=0).to(torch.bfloat16).eval()
    ids = torch.tensor([tokenizer("Who wrote Hamlet? <answer> Shakespeare </answer>")["input_ids"]])
    with torch.no_grad():
        got = token_logprobs(model, ids, torch.ones_like(ids))[0][0, 1:]
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0, :-1]
        exact = torch.log_softmax(hidden.float() @ model.lm_head.weight.float().T, -1)
        want = exact.gather(-1, ids[0, 1:, None]).squeeze(-1)
        bf16 = torch.log_softmax(model.lm_head(hidden).float(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert (bf16 - want).abs().max() > 10 * (got - want).abs().max() + 1e-4  # the bfloat16 head really rounds
