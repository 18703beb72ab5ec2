"""Trajectories + their rewards -> the padded tensors StePPO trains on.

Sequences are ``prompt + response``, right-padded. Every per-token tensor is (batch, length)
over absolute positions; position p holds what concerns token p (its log-probability given the
tokens before it, the value of the state before it, the reward it received). ``action_mask``
is 1 exactly on the response tokens the policy generated (rollout loss mask 1); ``response_mask`` is 1
on every response token, forced information and warnings included (the released statistics' mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .rewards import place_rewards


@dataclass
class PPOBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    token_rewards: torch.Tensor
    """Task rewards (step rewards on each ``</search>`` end, final reward on the last response token)."""
    response_start: list[int]
    response_mask: torch.Tensor | None = None
    """1 on every response token (generated or forced); None = the same as ``action_mask``."""
    old_logprobs: torch.Tensor | None = None
    """log pi_old of each generated token as the rollout sampled it (0 elsewhere); None: recompute in the update."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, idx: Sequence[int], trim: bool = False) -> "PPOBatch":
        """Rows ``idx``; ``trim=True`` also drops the trailing columns that are padding in every selected row
        (sequences are right-padded and causal, so nothing before them changes: a minibatch of short
        trajectories no longer pays for the longest one of the whole batch)."""
        i = torch.as_tensor(list(idx))
        w = int(self.attention_mask[i].sum(1).max()) if trim else self.input_ids.shape[1]
        return PPOBatch(
            self.input_ids[i, :w],
            self.attention_mask[i, :w],
            self.action_mask[i, :w],
            self.token_rewards[i, :w],
            [self.response_start[j] for j in idx],
            None if self.response_mask is None else self.response_mask[i, :w],
            None if self.old_logprobs is None else self.old_logprobs[i, :w],
        )

    def length_sorted_chunks(self, size: int) -> list[list[int]]:
        """Row indices in chunks of ``size``, shortest sequences first: the no-grad passes over the whole
        batch run chunk by chunk, each trimmed to its own longest row."""
        order = sorted(range(len(self)), key=lambda b: int(self.attention_mask[b].sum()))
        return [order[k : k + size] for k in range(0, len(order), size)]

    def stats_mask(self, stats_tokens: str) -> torch.Tensor:
        """The mask of GAE, the whitening statistics and the value loss: ``response`` (released: every
        response token) or ``generated`` (the policy's own tokens)."""
        if stats_tokens == "generated" or self.response_mask is None:
            return self.action_mask
        if stats_tokens != "response":
            raise ValueError(f"ppo.stats_tokens must be 'response' or 'generated', got {stats_tokens!r}")
        return self.response_mask


def build_batch(trajectories, scored, pad_id: int, use_step_rewards: bool = True) -> PPOBatch:
    """Pack rollout `Trajectory` objects and their `TrajectoryRewards` into a `PPOBatch`.

    ``use_step_rewards=False`` keeps only the final reward (global-reward PPO)."""
    if len(trajectories) != len(scored):
        raise ValueError(f"{len(trajectories)} trajectories but {len(scored)} reward records")
    width = max(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    n = len(trajectories)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    act = torch.zeros((n, width), dtype=torch.float32)
    resp = torch.zeros((n, width), dtype=torch.float32)
    sampled = all(getattr(t, "sampled_logprobs", None) is not None for t in trajectories)
    old = torch.zeros((n, width), dtype=torch.float32) if sampled else None
    rew = torch.zeros((n, width), dtype=torch.float32)
    starts = []
    for b, (t, s) in enumerate(zip(trajectories, scored)):
        p, r = len(t.prompt_ids), len(t.response_ids)
        ids[b, : p + r] = torch.tensor(t.prompt_ids + t.response_ids)
        attn[b, : p + r] = 1
        act[b, p : p + r] = torch.tensor(t.loss_mask, dtype=torch.float32)
        resp[b, p : p + r] = 1.0
        if old is not None:
            old[b, p : p + r] = torch.tensor(t.sampled_logprobs, dtype=torch.float32)
        steps = s.step_rewards if use_step_rewards else [0.0] * len(s.step_rewards)
        rew[b, p : p + r] = torch.from_numpy(place_rewards(r, t.search_end_idx, steps, s.final_reward)).float()
        starts.append(p)
    return PPOBatch(ids, attn, act, rew, starts, resp, old)
