"""StepSearch-format files: our constructed data and the released training data.

A StepSearch record::

    {"id", "question", "final_answer", "answer_aliases": [...],
     "sub_searchs": [[query, ...] per sub-question],
     "sub_support_docs": [{"title", "paragraph_text"} per sub-question]}

`read_stepsearch` reads such records from JSON Lines / JSON (``musi_answerable_*.jsonl``) and
from the released parquet rows, whose gold queries sit in ``reward_model.ground_truth.search_keys``
and gold documents in ``extra_info.support_docs``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from .data import split_contents
from .fileio import DataFormatError, MissingInputError, atomic_path, iter_json_records, where, write_jsonl

FIELDS = ("id", "question", "final_answer", "answer_aliases", "sub_searchs", "sub_support_docs")
"""The released StepSearch fields, in order."""


def write_stepsearch(records: list[dict], out_dir: Path | str, name: str) -> dict[str, Path]:
    """Write ``<name>.jsonl`` and the HF dataset folder ``<name>/`` (both atomically)."""
    import datasets

    out_dir = Path(out_dir)
    for i, rec in enumerate(records):
        validate(rec, f"records[{i}]")
    jsonl = write_jsonl(out_dir / f"{name}.jsonl", ({k: r[k] for k in FIELDS} for r in records))
    with atomic_path(out_dir / name, is_dir=True) as tmp:
        datasets.Dataset.from_list([{k: r[k] for k in FIELDS} for r in records]).save_to_disk(str(tmp))
    return {"jsonl": jsonl, "dataset": out_dir / name}


def validate(rec: dict, at: str) -> dict:
    """Check a StepSearch record's fields and types; errors name ``at`` and the field."""

    def fail(msg: str):
        raise DataFormatError(f"{at}: {msg}")

    for key, kind in (("id", (str, int)), ("question", str), ("final_answer", str)):
        if not isinstance(rec.get(key), kind):
            fail(f"field '{key}' must be {kind.__name__ if isinstance(kind, type) else 'str'}")
    if not isinstance(rec.get("answer_aliases", []), list):
        fail("field 'answer_aliases' must be a list")
    subs, docs = rec.get("sub_searchs"), rec.get("sub_support_docs")
    if not isinstance(subs, list) or not all(isinstance(q, list) and all(isinstance(x, str) for x in q) for q in subs):
        fail("field 'sub_searchs' must be a list of lists of queries")
    if not isinstance(docs, list) or not all(
        isinstance(d, dict) and isinstance(d.get("title"), str) and isinstance(d.get("paragraph_text"), str)
        for d in docs
    ):
        fail("field 'sub_support_docs' must be a list of {title, paragraph_text}")
    return rec


def read_stepsearch(path: Path | str) -> list[dict]:
    """StepSearch records from ``.jsonl`` / ``.json`` or a released ``.parquet`` file."""
    path = Path(path)
    rows: Iterator[tuple[int | None, dict]] = (
        _iter_parquet(path) if path.suffix == ".parquet" else iter_json_records(path)
    )
    out = []
    for line, row in rows:
        at = where(path, line) if path.suffix != ".parquet" else f"{path} row {line}"
        rec = row if "sub_searchs" in row else _from_verl_row(row, at)
        out.append(validate({**rec, "answer_aliases": list(rec.get("answer_aliases") or [])}, at))
    return out


def _iter_parquet(path: Path):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield i, row


def _from_verl_row(row: dict[str, Any], at: str) -> dict:
    """A released veRL parquet row -> a StepSearch record."""
    gt = (row.get("reward_model") or {}).get("ground_truth") or {}
    extra = row.get("extra_info") or {}
    keys, docs = gt.get("search_keys"), extra.get("support_docs")
    if keys is None or docs is None:
        raise DataFormatError(
            f"{at}: not a StepSearch row (needs reward_model.ground_truth.search_keys and "
            f"extra_info.support_docs, or the sub_searchs fields)"
        )
    target = gt.get("target", row.get("golden_answers", []))
    answers = [str(t) for t in (list(target) if isinstance(target, (list, tuple)) else [target])]
    if not answers:
        raise DataFormatError(f"{at}: reward_model.ground_truth.target holds no answer")
    return {
        "id": str(row.get("id", extra.get("id", extra.get("index", "")))),
        "question": row.get("question") or extra.get("question") or _question_from_prompt(row.get("prompt"), at),
        "final_answer": answers[0],
        "answer_aliases": answers[1:],
        "sub_searchs": [list(q) if isinstance(q, (list, tuple)) else [q] for q in keys],
        "sub_support_docs": [_doc(d, at) for d in docs],
    }


def _doc(d: Any, at: str) -> dict:
    if isinstance(d, dict) and "paragraph_text" in d:
        return {"title": str(d.get("title", "")), "paragraph_text": str(d["paragraph_text"])}
    if isinstance(d, dict) and "contents" in d:
        title, text = split_contents(str(d["contents"]))
        return {"title": title, "paragraph_text": text}
    if isinstance(d, dict) and "text" in d:
        return {"title": str(d.get("title", "")), "paragraph_text": str(d["text"])}
    raise DataFormatError(f"{at}: a support doc must have title + paragraph_text (or contents), got {d!r:.80}")


def _question_from_prompt(prompt: Any, at: str) -> str:
    text = prompt[-1]["content"] if isinstance(prompt, (list, tuple)) and prompt else str(prompt or "")
    m = re.findall(r"Question:\s*(.+)", text)
    if not m:
        raise DataFormatError(f"{at}: no 'question' field and no 'Question:' line in the prompt")
    return m[-1].strip()
