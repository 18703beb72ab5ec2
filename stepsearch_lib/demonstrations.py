"""Search demonstrations for the SFT warm start, built from StepSearch records.

For each sub-question: a short reasoning turn, a surviving gold query in ``<search>``, the
retriever's real top-k documents as a forced ``<information>`` block; then the final answer.
Rows are pre-tokenised exactly as a rollout tokenises them (prompt, each turn and each forced
block encoded separately), with ``completion_mask`` 0 on the prompt and forced blocks, which is
what TRL's SFTTrainer takes with ``completion_only_loss=True``.
"""

from __future__ import annotations

import random
from typing import Sequence

from .protocol import build_prompt, cut_words, information_block
from .query_writers import keyword_form
from .retrieval import Retriever


def episode_pieces(
    queries: Sequence[str],
    docs_per_query: Sequence[Sequence[tuple[str, str]]],
    answer: str,
    template: str = "plan",
    doc_render: str = "released",
) -> list[tuple[str, bool]]:
    """A scripted response as (text, trainable) pieces: per query a reasoning + search turn and its
    forced information block (rendered as a rollout renders it), then the answer turn."""
    tag = "plan" if template == "plan" else "think"
    pieces: list[tuple[str, bool]] = []
    for j, (query, docs) in enumerate(zip(queries, docs_per_query)):
        lead = "I need to find out" if j == 0 else "Next I need to find out"
        pieces.append((f"<{tag}> {lead}: {query}. </{tag}>\n<search> {query} </search>", True))
        pieces.append((information_block(docs, doc_render), False))
    pieces.append((f"<{tag}> I have the information I need. </{tag}>\n<answer> {answer} </answer>", True))
    return pieces


def tokenize_pieces(
    prompt: str, pieces: Sequence[tuple[str, bool]], tokenizer
) -> tuple[list[int], list[int], list[int]]:
    """Token ids, completion mask (0 on the prompt and forced pieces) and the absolute index of the
    last token of every trainable piece that ends with ``</search>``; each piece is encoded on its
    own, exactly as a rollout encodes its turns and forced blocks."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    mask = [0] * len(ids)
    ends = []
    for text, trainable in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids, mask = ids + piece, mask + [int(trainable)] * len(piece)
        if trainable and text.endswith("</search>"):
            ends.append(len(ids) - 1)
    return ids, mask, ends


def question_queries(question: str, hops: int) -> list[str]:
    """The `question` warm start's queries: the question itself, then its keywords, alternating, one per hop.

    >>> question_queries("Who is the mother of the director of Up?", 3)
    ['Who is the mother of the director of Up?', 'mother director Up', 'Who is the mother of the director of Up?']
    """
    forms = [question.strip(), keyword_form(question)]
    return [forms[j % 2] for j in range(hops)]


def build_demonstrations(
    records: Sequence[dict],
    retriever: Retriever,
    tokenizer,
    n: int,
    topk: int = 3,
    doc_words: int = 0,
    template: str = "plan",
    seed: int = 0,
    doc_render: str = "released",
    queries: str = "gold",
) -> list[dict]:
    """``n`` demonstration rows (records cycled; a different surviving query each pass).

    ``queries="gold"``: each hop searches with one of its surviving gold queries; ``"question"``: with the
    question and its keywords (`question_queries`), the same number of searches, no gold query.

    Each row: ``input_ids``, ``completion_mask``, ``search_end_idx`` (absolute token positions),
    ``id``. Retrieval is batched over all hops of all rows.
    """
    if not records:
        raise ValueError("no StepSearch records to build demonstrations from")
    if queries not in ("gold", "question"):
        raise ValueError(f"train.sft_queries must be 'gold' or 'question', got {queries!r}")
    rng = random.Random(seed)
    chosen = [records[i % len(records)] for i in range(n)]
    choices = [[rng.randrange(len(q)) for q in rec["sub_searchs"]] for rec in chosen]
    per_row = [
        [q[c[j] % len(q)] for j, q in enumerate(rec["sub_searchs"])]
        if queries == "gold"
        else question_queries(rec["question"], len(rec["sub_searchs"]))
        for rec, c in zip(chosen, choices)
    ]
    flat = [q for row in per_row for q in row]
    results = iter(retriever.batch_search(flat, topk) if flat else [])
    rows = []
    for rec, row_queries in zip(chosen, per_row):
        hits = [[(h.passage.title, cut_words(h.passage.text, doc_words)) for h in next(results)] for _ in row_queries]
        pieces = episode_pieces(row_queries, hits, rec["final_answer"], template, doc_render)
        ids, mask, ends = tokenize_pieces(build_prompt(rec["question"], template, tokenizer), pieces, tokenizer)
        if tokenizer.eos_token_id is not None:
            ids, mask = ids + [tokenizer.eos_token_id], mask + [1]
        rows.append({"id": str(rec["id"]), "input_ids": ids, "completion_mask": mask, "search_end_idx": ends})
    return rows


def pad_rows(rows: Sequence[dict], pad_id: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` tensors of demonstration rows."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)

    def padded(key, value):
        return torch.tensor([list(r[key]) + [value] * (width - len(r[key])) for r in rows])

    ids = padded("input_ids", pad_id)
    attn = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    return ids, attn, padded("completion_mask", 0)


def completion_loss(model, input_ids, attention_mask, completion_mask):
    r"""Mean next-token cross-entropy over completion tokens only. The LM head runs on those
    positions alone, so the (batch x length x vocab) logits tensor is never built.

    $\mathcal L_\mathrm{SFT} = -\frac{1}{\sum_t m_t} \sum_t m_t \log \pi_\theta(y_t \mid y_{<t})$
    """
    import torch.nn.functional as F

    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = completion_mask[:, 1:].bool()  # position i predicts token i + 1
    logits = model.get_output_embeddings()(hidden[:, :-1][targets])
    return F.cross_entropy(logits.float(), input_ids[:, 1:][targets])
