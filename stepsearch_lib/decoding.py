"""Batched decoding that keeps one KV cache across the turns of a multi-turn episode: token in, token out.

A rollout alternates the policy's turns with forced observations (retrieved documents, warnings).
Re-prefilling prompt + history every turn costs O(turns x length) prefill on the CPU; here each
batch holds ONE cache for all its rows and only new tokens are ever fed:

* rows differ in length, so a row that has nothing to feed at a step feeds a *hole*: the pad token
  with attention-mask 0 (every hole sits after a real token of its row, so no query is fully masked);
  positions are explicit per row (``position_ids``), so holes do not shift RoPE positions;
* a forced observation is appended with the row's pending last sampled token, right-padded with
  holes to the longest row of the chunk;
* rows whose episode ended are dropped from the cache (``DynamicCache.batch_select_indices``).

The sampled token ids are the trainable response (never decoded and re-encoded). A turn stops on
``</search>`` / ``</answer>`` (checked on the decoded tail of the turn's own ids, so any
tokenisation of the tags counts), on EOS (which is not kept: it is neither fed nor trained), or
after ``max_new_tokens``. Sampling is temperature + nucleus (top-p) over the full softmax with no
top-k; ``reuse_cache=False`` re-prefills every row before each turn (the reference path, identical
tokens: tests/test_decoding.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import lm_head_float32
from .protocol import STOP_STRINGS

_TOP_P_CANDIDATES = 256
"""Tokens sorted for top-p before falling back to a full sort (exact either way)."""

_TAIL_TOKENS = 12
"""Tokens of a turn's tail decoded to look for a stop string (a stop string is at most a few tokens)."""


def turn_ended(tokenizer, turn_ids: list[int]) -> bool:
    """Whether a turn's own ids now contain a stop string (decoded tail: any tokenisation of the tags counts)."""
    tail = tokenizer.decode(turn_ids[-_TAIL_TOKENS:])
    return any(s in tail for s in STOP_STRINGS)


@dataclass(frozen=True)
class Sampling:
    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 256


def sample(logits: torch.Tensor, spec: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row: argmax (greedy), or a draw from softmax(logits / T) cut to the smallest set of
    tokens whose mass reaches ``top_p`` (no top-k: the scored policy is the full softmax)."""
    if spec.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / spec.temperature, dim=-1)
    if spec.top_p < 1.0:
        # the kept set lies inside the 256 likeliest tokens whenever they hold top_p of the mass: sort only those
        k = min(_TOP_P_CANDIDATES, probs.shape[-1])
        sorted_p, order = probs.topk(k, dim=-1)
        if (sorted_p.sum(-1) < spec.top_p).any():  # a flat distribution: sort everything (same rule, exact)
            sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the tokens ranked above each one
        sorted_p = sorted_p.masked_fill(before >= spec.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class BatchDecoder:
    """Rows of token ids decoded together with one KV cache; see the module docstring.

    ``rows`` are the caller's row keys (any hashable); `prefill` starts them from their prompts."""

    def __init__(self, model, tokenizer, prompts: dict, reuse_cache: bool = True):
        self.model, self.tok, self.reuse_cache = model, tokenizer, reuse_cache
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.seq = {r: list(ids) for r, ids in prompts.items()}  # every token of each row (fed or pending)
        self.pending = {r: [] for r in prompts}  # tokens of a row not yet fed to the model
        self.order: list = []
        self._start(list(prompts))

    # ---- the cache
    def _start(self, rows: list) -> None:
        """A fresh cache holding ``rows``' full sequences (right-padded chunk: holes after the real tokens)."""
        from transformers import DynamicCache

        self.order = list(rows)
        self.cache = DynamicCache()
        n = len(rows)
        self.mask = torch.zeros((n, 0), dtype=torch.long)
        self.next_pos = torch.zeros(n, dtype=torch.long)
        self.last_hidden = None
        for r in rows:
            self.pending[r] = []
        self._feed([self.seq[r] for r in rows])

    def _feed(self, chunks: list[list[int]]) -> None:
        """Feed one chunk per row (in ``order``), right-padded with holes; keep each row's last real hidden state."""
        width = max(len(c) for c in chunks)
        if width == 0:
            return
        ids = torch.full((len(chunks), width), self.pad, dtype=torch.long)
        real = torch.zeros((len(chunks), width), dtype=torch.long)
        for i, c in enumerate(chunks):
            ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            real[i, : len(c)] = 1
        # explicit positions: real tokens continue the row's own count; holes repeat the last one
        pos = self.next_pos[:, None] + (real.cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, real], dim=1)
        with torch.no_grad():
            out = self.model.get_decoder()(
                input_ids=ids.to(self.model.device),
                attention_mask=self.mask.to(self.model.device),
                position_ids=pos.to(self.model.device),
                cache=self.cache,
                use_cache=True,
            )
        hidden = out.last_hidden_state
        lengths = real.sum(1)
        last = (lengths - 1).clamp(min=0)
        fresh = hidden[torch.arange(len(chunks)), last.to(hidden.device)]
        if self.last_hidden is None:
            self.last_hidden = fresh
        else:  # rows that fed nothing keep their previous state
            keep = (lengths == 0).to(hidden.device)[:, None]
            self.last_hidden = torch.where(keep, self.last_hidden, fresh)
        self.next_pos = self.next_pos + lengths

    def _logits(self) -> torch.Tensor:
        """Next-token logits of every row in ``order``, only at the rows' last states: the LM head in float32
        for a float32 policy; in its own dtype for a bfloat16 sampling copy (``rollout.generation_dtype``), where
        a float32 head would copy the whole embedding matrix every step."""
        head = self.model.get_output_embeddings()
        with torch.no_grad():
            if head.weight.dtype == torch.float32:
                return lm_head_float32(self.model, self.last_hidden)
            return head(self.last_hidden.to(head.weight.dtype)).float()

    def keep(self, rows: list) -> None:
        """Drop every row not in ``rows`` (episodes that ended) from the batch and its cache."""
        if list(rows) == self.order:
            return
        idx = [self.order.index(r) for r in rows]
        if self.reuse_cache:
            index = torch.tensor(idx, dtype=torch.long)
            self.cache.batch_select_indices(index.to(self.model.device))
            self.mask, self.next_pos = self.mask[index], self.next_pos[index]
            self.last_hidden = self.last_hidden[index.to(self.last_hidden.device)]
        self.order = [self.order[i] for i in idx]

    # ---- turns
    def generate_turn(self, spec: Sampling, generator: torch.Generator | None = None) -> tuple[dict, dict]:
        """Sample one turn for every row: ({row: sampled token ids}, {row: their log-probabilities under the
        policy's full softmax, temperature 1: PPO's behaviour log-probabilities}), stopped as the module says."""
        if not self.reuse_cache:  # the reference path: re-prefill every row's whole history
            self._start(list(self.order))
        elif any(self.pending[r] for r in self.order):
            self._feed([self.pending[r] for r in self.order])
            for r in self.order:
                self.pending[r] = []
        turn = {r: [] for r in self.order}
        logps = {r: [] for r in self.order}
        running = [True] * len(self.order)
        for _ in range(spec.max_new_tokens):
            logits = self._logits()
            picked = sample(logits, spec, generator)
            token_logp = torch.log_softmax(logits, -1).gather(-1, picked[:, None]).squeeze(-1).tolist()
            tokens = picked.tolist()
            feed = []
            for i, r in enumerate(self.order):
                if not running[i]:
                    feed.append([])
                    continue
                tok = tokens[i]
                if tok == self.tok.eos_token_id:  # not kept: the turn just ends
                    running[i] = False
                    feed.append([])
                    continue
                turn[r].append(tok)
                logps[r].append(token_logp[i])
                self.seq[r].append(tok)
                if turn_ended(self.tok, turn[r]) or len(turn[r]) >= spec.max_new_tokens:
                    running[i] = False
                    self.pending[r].append(tok)  # fed with the next observation
                    feed.append([])
                else:
                    feed.append([tok])
            if not any(running):
                break
            self._feed(feed)
        return turn, logps

    def append(self, forced: dict) -> None:
        """Append forced tokens (an observation) to rows of the batch, after their pending sampled token."""
        for r, ids in forced.items():
            self.seq[r] += list(ids)
            self.pending[r] += list(ids)
        if self.reuse_cache and any(self.pending[r] for r in self.order):
            self._feed([self.pending[r] for r in self.order])
            for r in self.order:
                self.pending[r] = []
