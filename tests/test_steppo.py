"""StePPO pieces against hand-written loops and hand-computed tensors."""

import math

import pytest
import torch

from stepsearch_lib.steppo import (
    entropy_from_logits, gae, kl_penalised_rewards, masked_mean, masked_whiten, policy_loss, value_loss,
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
    expected = torch.tensor(_gae_by_hand(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam), dtype=torch.float64)
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
    assert masked_mean(w ** 2, mask).item() == pytest.approx(2 / 3, abs=1e-4)  # unbiased variance: (n - 1) / n
    h = entropy_from_logits(torch.zeros(1, 1, 4))
    assert h.item() == pytest.approx(math.log(4))
