"""Scripted trajectories for reward design (notebook 03): known behaviours on real questions.

Kinds, each built from a StepSearch record with real retrieval for every query:

* ``gold``        -- one gold query per sub-question, then the right answer;
* ``paraphrase``  -- the keyword form of each gold query, right answer;
* ``off_topic``   -- another question's gold queries, right answer;
* ``repeated``    -- the first gold query issued once per sub-question, right answer;
* ``no_search``   -- answers at once;
* ``wrong_answer``-- gold queries, another question's answer.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import numpy as np

from .demonstrations import episode_pieces, tokenize_pieces
from .protocol import cut_words, information_block, split_docs
from .query_writers import keyword_form
from .retrieval import Retriever
from .rewards import REWARD_CONFIGS, combine_rewards, gold_of, place_rewards, score_trajectory
from .rollout import rollout_from_config

KINDS = ("gold", "paraphrase", "off_topic", "repeated", "no_search", "wrong_answer")
"""Scripted behaviours, best first."""


def _plan(kind: str, rec: dict, other: dict) -> tuple[list[str], str]:
    gold = [q[0] for q in rec["sub_searchs"]]
    answer = rec["final_answer"]
    if kind == "gold":
        return gold, answer
    if kind == "paraphrase":
        return [keyword_form(q) or q for q in gold], answer
    if kind == "off_topic":
        return [q[0] for q in other["sub_searchs"]], answer
    if kind == "repeated":
        return [gold[0]] * len(gold), answer
    if kind == "no_search":
        return [], answer
    if kind == "wrong_answer":
        return gold, other["final_answer"]
    raise ValueError(f"unknown scripted kind {kind!r}; expected one of {KINDS}")


def scripted_trajectories(
    records: Sequence[dict],
    retriever: Retriever,
    topk: int = 3,
    doc_words: int = 0,
    kinds: Sequence[str] = KINDS,
    template: str = "plan",
    doc_render: str = "released",
) -> list[dict]:
    """One trajectory per (record, kind): ``id, question, kind, response, pieces, queries, step_docs``
    (documents rendered in ``doc_render`` style and split back by its splitter, as in a rollout)."""
    if len(records) < 2:
        raise ValueError("scripted trajectories need at least two records (off-topic queries come from another)")
    plans = [
        (rec, kind, *_plan(kind, rec, records[(i + 1) % len(records)]))
        for i, rec in enumerate(records)
        for kind in kinds
    ]
    flat = [q for _, _, queries, _ in plans for q in queries]
    results = iter(retriever.batch_search(flat, topk) if flat else [])
    out = []
    for rec, kind, queries, answer in plans:
        docs = [[(h.passage.title, cut_words(h.passage.text, doc_words)) for h in next(results)] for _ in queries]
        pieces = episode_pieces(queries, docs, answer, template, doc_render)
        out.append(
            {
                "id": str(rec["id"]),
                "question": rec["question"],
                "kind": kind,
                "response": "".join(text for text, _ in pieces),
                "pieces": pieces,
                "queries": queries,
                "step_docs": [split_docs(information_block(d, doc_render), doc_render) for d in docs],
            }
        )
    return out


def score_rows(
    trajectories: Sequence[dict], records: Sequence[dict], reward_cfg, configs: Sequence[str] = tuple(REWARD_CONFIGS)
) -> list[dict]:
    """Per trajectory: every reward component, and the episode return under each reward configuration."""
    from dataclasses import replace

    by_id = {str(r["id"]): gold_of(r) for r in records}
    rows = []
    for t in trajectories:
        gold = by_id[t["id"]]
        base = score_trajectory(t["response"], t["queries"], t["step_docs"], reward_cfg=reward_cfg, **gold)
        row = {
            "id": t["id"],
            "kind": t["kind"],
            "searches": len(t["step_docs"]),
            "answer_f1": base.answer_f1,
            "search_key": base.search_key,
            "info_gain": float(np.sum(base.info_gain)),
            "redundancy": float(np.sum(base.redundancy)),
            "step_rewards": float(np.sum(base.step_rewards)),
            "final_reward": base.final_reward,
        }
        for name in configs:  # components computed once, recombined per configuration
            r = combine_rewards(base, replace(reward_cfg, name=name))
            row[f"return/{name}"] = float(sum(r.step_rewards) + r.final_reward)
        rows.append(row)
    return rows


PRESET_COMPONENTS = (
    "searches",
    "answer_f1",
    "search_key",
    "info_gain",
    "redundancy",
    "step_rewards",
    "final_reward",
    "return/full",
)
"""What `compare_presets` sets side by side (sums over a trajectory's steps; ``return/full`` = steps + final)."""


def compare_presets(
    records: Sequence[dict], retriever: Retriever, configs, policy=None, tokenizer=None
) -> tuple[list[dict], list[dict]]:
    """Every reward component under each fidelity preset (`cli.fidelity_configs`), side by side.

    Per preset: the scripted behaviours rendered in that preset's style and scored under its reward fields;
    with a ``policy``, also its greedy rollouts under that preset (prompt template, turn logic, rendering,
    observation cap), kind ``base_model``. Returns (per-trajectory rows with a ``preset`` column, a table of
    the mean of every component per kind and preset with ``gap`` = second preset - first)."""
    rows: list[dict] = []
    for name, cfg in configs.items():
        trajs = scripted_trajectories(
            records,
            retriever,
            cfg.retrieval.topk,
            cfg.rollout.doc_words,
            template=cfg.rollout.template,
            doc_render=cfg.rollout.doc_render,
        )
        if policy is not None:
            rolled = rollout_from_config(
                policy, tokenizer, [r["question"] for r in records], retriever, cfg, greedy=True
            )
            trajs += from_rollouts(rolled, records, tokenizer)
        rows += [{"preset": name, **row} for row in score_rows(trajs, records, cfg.reward)]
    names = list(configs)
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    table = []
    for kind in kinds:
        for comp in PRESET_COMPONENTS:
            means = {
                n: float(np.mean([r[comp] for r in rows if r["kind"] == kind and r["preset"] == n])) for n in names
            }
            table.append({"kind": kind, "component": comp, **means, "gap": means[names[-1]] - means[names[0]]})
    return rows, table


def token_layout(trajectory: dict, tokenizer, scored) -> dict:
    """Token-level reward layout of one scripted trajectory, response tokens only: the reward on
    every token, its loss mask, the search-end indexes (for the layout figure)."""
    ids, mask, ends = tokenize_pieces("", trajectory["pieces"], tokenizer)
    rewards = place_rewards(len(ids), ends, scored.step_rewards, scored.final_reward)
    return {
        "id": trajectory["id"],
        "kind": trajectory["kind"],
        "tokens": tokenizer.convert_ids_to_tokens(ids),
        "rewards": rewards.tolist(),
        "loss_mask": mask,
        "search_end_idx": ends,
        "scores": asdict(scored),
    }


def from_rollouts(trajectories, records: Sequence[dict], tokenizer, kind: str = "base_model") -> list[dict]:
    """Rollout `Trajectory` objects in the scripted-row shape, so `score_rows` scores them alike."""
    return [
        {
            "id": str(rec["id"]),
            "question": rec["question"],
            "kind": kind,
            "response": t.response_text(tokenizer),
            "queries": list(t.queries),
            "step_docs": t.step_docs,
        }
        for t, rec in zip(trajectories, records)
    ]
