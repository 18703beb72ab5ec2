"""Batched multi-turn search rollouts with forced information tokens and loss masks.

Each round, the still-active trajectories of a batch generate together until ``</search>`` or
``</answer>``: by default with one KV cache kept across the whole episode (`decoding.BatchDecoder`,
``rollout.engine = kv``), so only new tokens are ever fed; the sampled token ids are the trainable
response (token in, token out) and their log-probabilities are kept for PPO. What the environment does
with each turn is `plan_turn`, a pure function of the turn text and the round (``rollout.turn_logic``):

* ``released`` (the released loop): ``max_turns`` rounds in which searching is allowed, then one final
  round with searching disabled, so the model always gets an answering round. A search is executed and
  its top-k documents appended as a forced ``<information>`` block (loss mask 0); anything that is not a
  search or an answer gets a forced warning and the episode continues; on round ``max_turns`` (the last
  search round) a second warning says no more searching is possible, whatever number of searches happened.
  Empty and nested ``<search>`` / ``<answer>`` blocks are actions. In the final round a search is recorded
  (the key reward scores it) but not executed, and the episode ends.
* ``strict``: searches are executed until ``max_turns`` of them happened; a search beyond that, an empty or
  nested block, or anything else gets a warning; at most ``max_turns + 1`` rounds.

Every forced observation is cut to ``max_obs_tokens`` tokens (released: 800). The token index where
each executed ``</search>`` ends is recorded (step rewards go there). Sampling runs under
``torch.random.fork_rng`` seeded from the call's ``seed``: reproducible, the caller's global RNG untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .config import RolloutConfig
from .decoding import BatchDecoder, Sampling, turn_ended
from .models import compute_autocast, resolved_compute_dtype
from .protocol import (
    INVALID_ACTION_WARNING,
    LAST_SEARCH_WARNING,
    STOP_STRINGS,
    build_prompt,
    cut_at_stop,
    cut_words,
    information_block,
    key_query,
    parse_action,
    split_docs,
)
from .retrieval import Retriever


@dataclass
class Trajectory:
    question: str
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    """1 on tokens the policy generated, 0 on forced information / warning tokens."""
    sampled_logprobs: list[float] | None = field(default_factory=list)
    """log pi(token) of each generated token when it was sampled (0 on forced tokens); None when the engine
    does not report them (``hf``): the update then recomputes them."""
    search_end_idx: list[int] = field(default_factory=list)
    """Response-token index of the last token of each executed ``</search>``."""
    queries: list[str] = field(default_factory=list)
    """Every search block the policy wrote, in order, as the key reward reads it (`protocol.key_query`);
    under `released` turn logic this includes a search written in the final round, which is not executed."""
    step_docs: list[list[str]] = field(default_factory=list)
    """Per executed search, the documents as the reward compares them (`protocol.split_docs` of the
    observation the model saw, after the cap)."""
    step_doc_ids: list[list[str]] = field(default_factory=list)
    answer: str | None = None
    invalid_turns: int = 0
    done: bool = False

    @property
    def num_searches(self) -> int:
        """Searches executed (retrieval ran and an information block was appended)."""
        return len(self.search_end_idx)

    def response_text(self, tokenizer) -> str:
        return tokenizer.decode(self.response_ids, skip_special_tokens=False)

    def _append(self, ids: list[int], trainable: bool, logprobs: list[float] | None = None) -> None:
        self.response_ids += ids
        self.loss_mask += [int(trainable)] * len(ids)
        if self.sampled_logprobs is not None:
            if trainable and logprobs is None:
                self.sampled_logprobs = None
            else:
                self.sampled_logprobs += list(logprobs) if trainable else [0.0] * len(ids)


@dataclass(frozen=True)
class Turn:
    """What the environment does with one generated turn."""

    kind: str
    """``search``, ``answer`` or ``invalid`` (as parsed under the turn logic)."""
    search: str | None = None
    """The query sent to the retriever (None: nothing is retrieved)."""
    key_query: str | None = None
    """The query the search-key reward scores (None: the turn wrote no search)."""
    warning: str = ""
    """Forced text after the turn (after the information block when there is one)."""
    done: bool = False


TURN_LOGICS = ("released", "strict")
"""`RolloutConfig.turn_logic` values."""


def rounds_of(max_turns: int) -> int:
    """Generation rounds of an episode under either turn logic: ``max_turns`` search rounds + one answering round."""
    return max_turns + 1


def plan_turn(text: str, round_idx: int, searches_done: int, max_turns: int, turn_logic: str = "released") -> Turn:
    """The environment step for one turn (``text`` already cut at its first ``</search>`` / ``</answer>``).

    >>> plan_turn("<search> Dai Jitao </search>", 0, 0, 5)
    Turn(kind='search', search='Dai Jitao', key_query='Dai Jitao', warning='', done=False)
    >>> plan_turn("<search> x </search>", 5, 5, 5).done  # the final round: recorded, not executed
    True
    """
    if turn_logic not in TURN_LOGICS:
        raise ValueError(f"turn_logic must be one of {TURN_LOGICS}, got {turn_logic!r}")
    released = turn_logic == "released"
    action = parse_action(text, lenient=released)
    if action.kind == "answer":
        return Turn("answer", done=True)
    if released:
        final_round = round_idx >= max_turns  # searching disabled: the episode ends whatever was written
        last_search_round = round_idx == max_turns - 1
        if action.kind == "search":
            query = key_query(action.content)
            if final_round:
                return Turn("search", key_query=query, done=True)
            return Turn("search", action.content, query, LAST_SEARCH_WARNING if last_search_round else "")
        if final_round:
            return Turn("invalid", done=True)
        return Turn("invalid", warning=INVALID_ACTION_WARNING + (LAST_SEARCH_WARNING if last_search_round else ""))
    if action.kind == "search" and searches_done < max_turns:
        last = searches_done + 1 >= max_turns
        return Turn("search", action.content, key_query(action.content), LAST_SEARCH_WARNING if last else "")
    warning = LAST_SEARCH_WARNING if searches_done >= max_turns else INVALID_ACTION_WARNING
    return Turn("invalid", warning=warning, done=round_idx >= max_turns)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hf_generate_turn(model, tokenizer, sequences: list[list[int]], spec: Sampling) -> list[list[int]]:
    """The baseline engine: one HF ``generate`` over the left-padded full sequences (prompt + history
    re-prefilled), ``top_k=0`` so it samples what the policy scores; each row's new ids up to its stop."""
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences])
    attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    kwargs = dict(
        max_new_tokens=spec.max_new_tokens, pad_token_id=pad, stop_strings=list(STOP_STRINGS), tokenizer=tokenizer
    )
    kwargs.update(do_sample=False) if spec.greedy else kwargs.update(
        do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0
    )
    with torch.no_grad():
        out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device), **kwargs)
    turns = []
    for row in out[:, width:].tolist():
        ids = []
        for tok in row:
            if tok in (tokenizer.eos_token_id, pad):
                break
            ids.append(tok)
            if turn_ended(tokenizer, ids):
                break
        turns.append(ids)
    return turns


def generation_copy(model, dtype: str):
    """A frozen copy of the policy for sampling only: LoRA merged into the weights, cast to ``dtype``.

    On CPUs with AMX / AVX512-BF16, bfloat16 prefill is several times faster than float32 (see
    docs/performance.md); log-probabilities for the update are still computed by the float32 policy.
    """
    import copy

    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"rollout.generation_dtype must be '', bfloat16, float16 or float32, got {dtype!r}")
    if getattr(model, "is_loaded_in_4bit", False) or getattr(
        getattr(model, "base_model", None), "is_loaded_in_4bit", False
    ):
        return model  # a 4-bit policy already computes in its compute dtype
    gen = copy.deepcopy(model)
    if hasattr(gen, "merge_and_unload"):
        gen = gen.merge_and_unload()  # merges the active (actor) adapter, drops the others
    return gen.to(getattr(torch, dtype)).eval().requires_grad_(False)


ENGINES = ("kv", "reprefill", "hf")
"""`RolloutConfig.engine`: ``kv`` (one KV cache across turns, `decoding.BatchDecoder`), ``reprefill`` (the same
decoder re-prefilling every row each turn: the exactness reference) or ``hf`` (HF ``generate`` per turn)."""


def rollout(
    model,
    tokenizer,
    questions: Sequence[str],
    retriever: Retriever,
    settings: RolloutConfig | None = None,
    *,
    topk: int = 3,
    greedy: bool = False,
    seed: int = 0,
    compute_dtype: str = "float32",
) -> list[Trajectory]:
    """Roll out one episode per question under ``settings`` (the config's rollout section; defaults when None),
    ``topk`` documents per search; batches of ``settings.batch_size`` generate together.

    ``greedy``: argmax decoding (evaluation) instead of ``settings.temperature`` / ``top_p`` sampling. ``seed``
    seeds the sampler (the caller's RNG is left alone). ``compute_dtype``: ``bfloat16`` runs the policy under
    autocast (as the update does). ``settings.generation_dtype`` (e.g. ``bfloat16``): sample from a merged copy of
    the policy in that dtype. ``turn_logic``, ``doc_render``, ``max_obs_tokens``, ``engine``: see the module
    docstring."""
    settings = settings or RolloutConfig()
    engine = settings.engine
    if engine not in ENGINES:
        raise ValueError(f"rollout engine must be one of {ENGINES}, got {engine!r}")
    was_training = model.training
    model.eval()
    gen_dtype = settings.generation_dtype
    policy, model = model, (generation_copy(model, gen_dtype) if gen_dtype else model)
    spec = Sampling(greedy, settings.temperature, settings.top_p, settings.max_new_tokens)
    trajectories: list[Trajectory] = []
    batch_size = settings.batch_size
    bar = tqdm(total=len(questions), desc="rollout", unit="question", leave=False, disable=len(questions) <= batch_size)
    with torch.random.fork_rng(devices=[]), compute_autocast(compute_dtype, model.device):
        torch.manual_seed(seed)  # the hf engine samples from the global generator (forked here)
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, len(questions), batch_size):
            batch = [
                Trajectory(q, _encode(tokenizer, build_prompt(q, settings.template, tokenizer)))
                for q in questions[start : start + batch_size]
            ]
            _run_batch(model, tokenizer, batch, retriever, spec, generator, settings, topk)
            trajectories += batch
            bar.update(len(batch))
    bar.close()
    policy.train(was_training)
    return trajectories


def _observe(tokenizer, text: str, max_obs_tokens: int) -> tuple[list[int], str]:
    """Token ids of a forced observation, cut to ``max_obs_tokens`` (0 = no cap), and the text the model sees."""
    ids = _encode(tokenizer, text)
    if 0 < max_obs_tokens < len(ids):
        ids = ids[:max_obs_tokens]
        text = tokenizer.decode(ids)
    return ids, text


def _run_batch(
    model, tokenizer, batch: list[Trajectory], retriever, spec: Sampling, generator, settings: RolloutConfig, topk: int
) -> None:
    """Play one batch of episodes to the end: turns sampled together, observations appended per row."""
    engine, max_turns, max_obs_tokens = settings.engine, settings.max_turns, settings.max_obs_tokens
    decoder = (
        None
        if engine == "hf"
        else BatchDecoder(model, tokenizer, {i: t.prompt_ids for i, t in enumerate(batch)}, reuse_cache=engine == "kv")
    )
    for round_idx in range(rounds_of(max_turns)):
        active = [i for i, t in enumerate(batch) if not t.done]
        if not active:
            return
        # 1. the policy's turn, token in / token out: the sampled ids are the trainable response
        if decoder is None:
            sampled = dict(
                zip(
                    active,
                    hf_generate_turn(
                        model, tokenizer, [batch[i].prompt_ids + batch[i].response_ids for i in active], spec
                    ),
                )
            )
            logps = {i: None for i in active}
        else:
            decoder.keep(active)
            sampled, logps = decoder.generate_turn(spec, generator)
        # 2. the environment's answer to each turn (`plan_turn`): done, a warning, or a search
        forced: dict[int, list[int]] = {}
        searching: list[tuple[int, Turn]] = []
        for i in active:
            traj, ids = batch[i], sampled[i]
            text, _ = cut_at_stop(tokenizer.decode(ids))
            traj._append(ids, trainable=True, logprobs=logps[i])
            turn = plan_turn(text, round_idx, traj.num_searches, max_turns, settings.turn_logic)
            if turn.key_query is not None:
                traj.queries.append(turn.key_query)
            if turn.kind == "answer":
                traj.answer = parse_action(text, lenient=True).content
            elif turn.kind == "invalid":
                traj.invalid_turns += 1
            if turn.search is not None:
                traj.search_end_idx.append(len(traj.response_ids) - 1)
                searching.append((i, turn))
            elif turn.warning:
                forced[i] = _observe(tokenizer, turn.warning, max_obs_tokens)[0]
            traj.done = turn.done
        # 3. retrieval for every search of the round at once; the documents become forced tokens
        if searching:
            results = retriever.batch_search([turn.search for _, turn in searching], topk)
            for (i, turn), hits in zip(searching, results):
                docs = [(h.passage.title, cut_words(h.passage.text, settings.doc_words)) for h in hits]
                ids, seen = _observe(
                    tokenizer, information_block(docs, settings.doc_render) + turn.warning, max_obs_tokens
                )
                batch[i].step_docs.append(split_docs(seen, settings.doc_render))
                batch[i].step_doc_ids.append([h.passage.id for h in hits])
                forced[i] = ids
        for i, ids in forced.items():
            batch[i]._append(ids, trainable=False)
        for i in active:  # the length cap ends an episode
            if len(batch[i].prompt_ids) + len(batch[i].response_ids) >= settings.max_prompt_tokens:
                batch[i].done = True
        # 4. the observations join the cache of the rows that go on
        if decoder is not None:
            decoder.append({i: ids for i, ids in forced.items() if not batch[i].done})
    for traj in batch:
        traj.done = True


def rollout_from_config(
    model, tokenizer, questions: Sequence[str], retriever: Retriever, cfg, greedy: bool = False, seed: int | None = None
) -> list[Trajectory]:
    """`rollout` driven by a `Config`: its rollout section, ``retrieval.topk``, ``model.compute_dtype``, seed."""
    return rollout(
        model,
        tokenizer,
        questions,
        retriever,
        cfg.rollout,
        topk=cfg.retrieval.topk,
        greedy=greedy,
        seed=cfg.seed if seed is None else seed,
        compute_dtype=resolved_compute_dtype(cfg.model),
    )
