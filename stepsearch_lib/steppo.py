"""StePPO's pieces, top to bottom: token rewards with KL, GAE, whitening, the clipped losses.

Tensors are (batch, length). ``mask`` is 1 on tokens the policy generated and 0 on padding and on
forced information / warning tokens: those are out of the KL, the policy loss and the entropy.
GAE, the whitening statistics and the value loss use ``ppo.stats_tokens``: every response token
(released, documents included) or the generated ones only (the paper's intent).
"""

from __future__ import annotations

import torch

from .models import keep_requires_grad, reference_policy, token_logprobs
from .parallel import World, average_gradients


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked entries; ``unbiased`` applies Bessel's correction n / (n - 1) (released)."""
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    n = mask.sum()
    return var * n / (n - 1) if unbiased and n > 1 else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, min_std: float = 0.0) -> torch.Tensor:
    """(x - mean) / max(sqrt(var + 1e-8), min_std) over the masked entries, unbiased variance (the mean is added
    back when ``shift_mean`` is False). ``min_std`` keeps a batch without signal (all returns equal: the spread
    is only critic and KL noise) from being scaled up to unit-size advantages."""
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) / torch.clamp(torch.sqrt(var + 1e-8), min=min_std)
    return whitened if shift_mean else whitened + mean


def kl_penalised_rewards(
    token_rewards: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""r'_t = r_t - beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) on trainable tokens; returns (r', kl).

    $r'_t = r_t - \beta (\log \pi_\theta(y_t) - \log \pi_\mathrm{ref}(y_t))$
    """
    # KL estimate per token: k1 = log pi - log pi_ref, only where the policy acted
    kl = (logprobs - ref_logprobs) * mask
    return token_rewards - beta * kl, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalised advantage estimation over the trainable tokens of each row (vectorised over rows).

    $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$, $A_t = \delta_t + \gamma \lambda A_{t+1}$, $R_t = A_t + V(s_t)$

    Masked tokens (forced information) are skipped: the recursion steps from one trainable token
    to the next, and a reward sitting on a masked token is carried back to the trainable token
    before it. With the released gamma = lambda = 1 this equals GAE over all tokens, since then
    A_t = sum_{k >= t} r_k - V(s_t).
        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V(s_t)
    """
    batch, length = rewards.shape
    m = mask.bool()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    carried = torch.zeros_like(next_value)
    for t in range(length - 1, -1, -1):
        r = rewards[:, t] + carried
        # delta_t = r_t + gamma V(s_{t+1}) - V(s_t)
        delta = r + gamma * next_value - values[:, t]
        # A_t = delta_t + gamma lambda A_{t+1}
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m[:, t], adv, torch.zeros_like(adv))
        next_adv = torch.where(m[:, t], adv, next_adv)
        next_value = torch.where(m[:, t], values[:, t], next_value)
        carried = torch.where(m[:, t], torch.zeros_like(carried), carried + rewards[:, t])
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, dict]:
    r"""Clipped surrogate: L = -E[min(rho A, clip(rho, 1-eps, 1+eps) A)], rho = exp(log pi - log pi_old).

    $L^\mathrm{CLIP} = -\mathbb E_t[\min(\rho_t A_t, \mathrm{clip}(\rho_t, 1 - \epsilon, 1 + \epsilon) A_t)]$
    """
    ratio = torch.exp(logprobs - old_logprobs)
    # L^CLIP = min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages)
    loss = -masked_mean(surrogate, mask)
    with torch.no_grad():
        stats = {
            "losses/clipfrac": masked_mean(((ratio - 1).abs() > clip).float(), mask).item(),
            "losses/approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask).item(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> torch.Tensor:
    """Clipped value loss: 0.5 E[max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)]."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    # L^V = 0.5 max((V - R)^2, (V_clip - R)^2)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


# ----------------------------------------------------------------------------- the update


def advantages_and_returns(
    token_rewards: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    action_mask: torch.Tensor,
    stats_mask: torch.Tensor,
    ppo,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The advantage phase of an update: (A, R, kl).

    r'_t = r_t - beta (log pi - log pi_ref) on generated tokens; A, R by GAE over ``stats_mask``;
    A whitened over ``stats_mask`` (released: every response token) and kept on generated tokens."""
    # r'_t = r_t - beta (log pi - log pi_ref): KL in the reward, on trainable tokens only
    rewards, kl = kl_penalised_rewards(token_rewards, old_logprobs, ref_logprobs, action_mask, ppo.kl_beta)
    # A_t, R_t by GAE(gamma, lambda) over the statistics tokens (same A_t on generated tokens when gamma = lambda = 1)
    advantages, returns = gae(rewards, old_values, stats_mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:  # mean and (unbiased) variance over the statistics tokens, std floored
        advantages = masked_whiten(advantages, stats_mask, min_std=ppo.whiten_min_std)
    return advantages * action_mask, returns, kl


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked entries: 1 = a perfect critic, 0 = no better than a constant,
    < 0 = worse. (nan when the returns do not vary.)"""
    var_r = masked_var(returns, mask, unbiased=False)
    if var_r <= 1e-12:
        return float("nan")
    return float(1 - masked_var(returns - values, mask, unbiased=False) / var_r)


def reference_logprobs(actor, batch) -> torch.Tensor:
    """log pi_ref: the same weights with the RL adapter off (no second copy of the model): the warm-started policy."""
    if not hasattr(actor, "disable_adapter"):
        raise TypeError("the reference policy is the actor with its adapter disabled: the actor needs a LoRA adapter")
    with torch.no_grad(), keep_requires_grad(actor), reference_policy(actor):
        return token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask)[0]


NO_GRAD_CHUNK = 4
"""Rows per no-grad pass (old values, reference log-probs): length-sorted chunks waste little on padding."""


def no_grad_pass(fn, batch, size: int) -> torch.Tensor:
    """``fn(sub_batch) -> (rows, width)`` over length-sorted chunks of ``size`` rows, each trimmed to its
    longest row, placed back at the batch's full width (0 beyond a chunk's width)."""
    out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=batch.input_ids.device)
    with torch.no_grad():
        for idx in batch.length_sorted_chunks(size):
            sub = batch.select(idx, trim=True)
            out[idx, : sub.input_ids.shape[1]] = fn(sub).float()
    return out


def warmup_factor(update: int, total_updates: int, warmup_frac: float) -> float:
    """Learning-rate multiplier of update ``update`` (0-based) under the released linear warm-up:
    min(1, update / max(1, W)) with W = int(warmup_frac * total_updates) warm-up updates (verl's
    constant-with-warm-up schedule, stepped once per update). ``warmup_frac = 0``: always 1.

    >>> [warmup_factor(u, 8, 0.285) for u in range(4)]
    [0.0, 0.5, 1.0, 1.0]
    """
    if warmup_frac <= 0:
        return 1.0
    return min(1.0, update / max(1, int(warmup_frac * total_updates)))


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def params_of(opt) -> list[torch.nn.Parameter]:
    return [p for group in opt.param_groups for p in group["params"]]


def optimizer_step(opt, max_grad_norm: float, world=None) -> None:
    """Average gradients over processes (data parallel), clip their norm, step, zero them."""
    params = params_of(opt)
    average_gradients(params, world or World())
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    opt.zero_grad()


def steppo_update(
    actor, critic, actor_opt, critic_opt, batch, ppo, seed: int = 0, world=None, update_actor: bool = True
) -> dict:
    """One StePPO update on a rollout batch (global-reward PPO is the same update on a batch
    built without step rewards). Returns namespaced metrics.

    Minibatches of ``ppo.minibatch_size`` trajectories; the optimizers step every
    ``ppo.grad_accum`` minibatches (losses scaled by 1 / grad_accum) and after the last one.
    ``update_actor=False``: a critic warm-up update (the value loss only; the policy is left alone).
    """
    mask = batch.action_mask
    stats = batch.stats_mask(ppo.stats_tokens)  # released: every response token; paper: generated ones
    actor.eval()
    critic.eval()
    # the behaviour policy's log-probs: as the rollout sampled them, else recomputed
    old_logprobs = (
        batch.old_logprobs
        if batch.old_logprobs is not None
        else no_grad_pass(
            lambda b: token_logprobs(actor, b.input_ids, b.attention_mask, b.action_mask)[0], batch, NO_GRAD_CHUNK
        )
    )
    old_values = no_grad_pass(lambda b: critic(b.input_ids, b.attention_mask), batch, NO_GRAD_CHUNK)
    ref_logprobs = no_grad_pass(lambda b: reference_logprobs(actor, b), batch, NO_GRAD_CHUNK)
    advantages, returns, kl = advantages_and_returns(
        batch.token_rewards, old_logprobs, ref_logprobs, old_values, mask, stats, ppo
    )
    ev = explained_variance(old_values, returns, stats)  # of the critic that produced these values

    actor.train()
    critic.train()
    gen = torch.Generator().manual_seed(seed)
    logs: dict[str, list[float]] = {}
    n = len(batch)
    starts = list(range(0, n, ppo.minibatch_size))
    for epoch in range(ppo.ppo_epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for k, start in enumerate(starts):
            idx = order[start : start + ppo.minibatch_size]
            mb = batch.select(idx, trim=True)  # without the columns that are padding in both rows
            w = mb.input_ids.shape[1]
            m = mb.action_mask
            step_now = (k + 1) % ppo.grad_accum == 0 or k + 1 == len(starts)
            if update_actor:
                logprobs, entropy = token_logprobs(actor, mb.input_ids, mb.attention_mask, m, with_entropy=True)
                pg_loss, pg_stats = policy_loss(logprobs, old_logprobs[idx, :w], advantages[idx, :w], m, ppo.clip_ratio)
                if k == 0 and epoch == 0:  # before any step: the scored policy should be the sampler
                    dev = ((logprobs.detach() - old_logprobs[idx, :w]).exp() - 1).abs() * m
                    logs["losses/ratio_dev_first"] = [dev.max().item()]
                ent = masked_mean(entropy, m)
                # actor loss = L^CLIP - c_ent * H
                ((pg_loss - ppo.entropy_coef * ent) / ppo.grad_accum).backward()
                if step_now:
                    optimizer_step(actor_opt, ppo.max_grad_norm, world)
            else:  # critic warm-up: nothing for the actor
                pg_loss, ent, pg_stats = torch.zeros(()), torch.zeros(()), {}
            with critic.active():  # a shared-backbone critic recomputes under its own adapter in backward
                values = critic(mb.input_ids, mb.attention_mask)
                vf_loss = value_loss(values, old_values[idx, :w], returns[idx, :w], stats[idx, :w], ppo.value_clip)
                (vf_loss / ppo.grad_accum).backward()
            if step_now:
                optimizer_step(critic_opt, ppo.max_grad_norm, world)
            for key, value in {
                "losses/policy": pg_loss.item(),
                "losses/value": vf_loss.item(),
                "losses/entropy": ent.item(),
                **pg_stats,
            }.items():
                logs.setdefault(key, []).append(value)
    out = {k: sum(v) / len(v) for k, v in logs.items()}
    out["losses/kl_ref"] = (kl.sum() / mask.sum().clamp(min=1)).item()
    out["critic/explained_variance"] = ev
    out["losses/actor_updated"] = float(update_actor)
    out["reward/token_sum"] = (batch.token_rewards.sum() / n).item()
    return out


def grpo_update(actor, opt, batch, groups: list[int], outcome: list[float], ppo, seed: int, world=None) -> dict:
    """GRPO: A_i = (R_i - mean_group) / (std_group + eps) on every action token of sample i."""
    rewards = torch.tensor(outcome, dtype=torch.float32)
    adv = torch.zeros(len(outcome))
    for g in set(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        r = rewards[idx]
        adv[idx] = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    mask = batch.action_mask
    advantages = adv[:, None] * mask
    actor.eval()
    with torch.no_grad():
        old = token_logprobs(actor, batch.input_ids, batch.attention_mask, mask)[0]
    actor.train()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(ppo.ppo_epochs):
        order = torch.randperm(len(batch), generator=gen).tolist()
        for start in range(0, len(batch), ppo.minibatch_size):
            idx = order[start : start + ppo.minibatch_size]
            mb = batch.select(idx)
            lp, ent = token_logprobs(actor, mb.input_ids, mb.attention_mask, mask[idx], with_entropy=True)
            loss, stats = policy_loss(lp, old[idx], advantages[idx], mask[idx], ppo.clip_ratio)
            (loss - ppo.entropy_coef * masked_mean(ent, mask[idx])).backward()
            optimizer_step(opt, ppo.max_grad_norm, world)
            losses.append(loss.item())
    return {"losses/policy": sum(losses) / len(losses), **stats}
