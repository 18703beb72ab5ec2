"""The critic: a causal-LM backbone with a scalar value head.

V at position p is the value of the state before token p (the head reads the hidden state at
p - 1), aligned with `batching.token_logprobs`. Two layouts (``model.critic``):

* ``separate``: its own backbone (a second copy of the policy's architecture, or any model
  name) with its own LoRA adapter.
* ``shared``: the policy's backbone, no second copy of the weights: the critic is a second LoRA
  adapter (``critic``) on the actor's peft model plus the value head. Forward *and backward*
  of the value loss must run inside `ValueModel.active()`, because activation checkpointing
  recomputes the forward during backward with whatever adapter is active then.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .models import keep_requires_grad

CRITIC_ADAPTER = "critic"
"""Adapter name of the shared-backbone critic."""


class ValueModel(nn.Module):
    def __init__(self, causal_lm, adapter: str | None = None):
        super().__init__()
        self.adapter = adapter
        if adapter is None:
            self.lm = causal_lm
        else:  # shared: keep the actor out of this module's parameters and state (the actor owns them)
            object.__setattr__(self, "_shared_lm", causal_lm)
        hidden = causal_lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def backbone(self):
        return self.lm if self.adapter is None else self._shared_lm

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the critic's optimizer steps: value head + the critic's LoRA weights."""
        head = list(self.value_head.parameters())
        if self.adapter is None:
            return [p for p in self.lm.parameters() if p.requires_grad] + head
        tag = f".{self.adapter}."
        return [p for n, p in self._shared_lm.named_parameters() if tag in n] + head

    @contextlib.contextmanager
    def active(self):
        """Make the critic's adapter the active one (no-op for a separate critic); the actor's
        adapter and every ``requires_grad`` flag are restored on exit."""
        if self.adapter is None:
            yield
            return
        lm = self._shared_lm
        previous = list(lm.base_model.active_adapters)  # the actor's: "default", or a frozen warm start + "default"
        with keep_requires_grad(lm):  # peft's set_adapter also flips requires_grad
            lm.base_model.set_adapter(self.adapter)
            try:
                yield
            finally:
                lm.base_model.set_adapter(previous)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.active():
            hidden = self.backbone.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        with torch.autocast(hidden.device.type, enabled=False):  # the value head in float32 under autocast
            v = self.value_head(hidden[:, :-1].float()).squeeze(-1)
        return torch.cat([torch.zeros_like(v[:, :1]), v], dim=1)


def add_critic_adapter(actor, lora_spec, seed: int = 0) -> None:
    """Add the shared critic's LoRA adapter to the actor's peft model (seeded, actor stays active)."""
    from peft import LoraConfig

    target = (
        lora_spec.target
        if lora_spec.target == "all-linear"
        else [t.strip() for t in lora_spec.target.split(",") if t.strip()]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        actor.add_adapter(
            CRITIC_ADAPTER,
            LoraConfig(
                r=lora_spec.r,
                lora_alpha=lora_spec.alpha,
                lora_dropout=lora_spec.dropout,
                target_modules=target,
                task_type="CAUSAL_LM",
            ),
        )
    for n, p in actor.named_parameters():  # add_adapter leaves the new adapter frozen until set active
        if f".{CRITIC_ADAPTER}." in n:
            p.requires_grad_(True)
