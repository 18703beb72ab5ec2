"""Official-format loaders and the normalised question / passage records.

Formats read (the full official files and the offline mirror alike):

| format      | file                                   | gold evidence                                   |
|-------------|----------------------------------------|-------------------------------------------------|
| `musique`   | MuSiQue jsonl                           | `paragraphs[].is_supporting`, `question_decomposition` |
| `hotpotqa`  | HotpotQA distractor json / jsonl        | `supporting_facts` titles in `context`           |
| `2wiki`     | 2WikiMultiHopQA json / jsonl            | `supporting_facts`, `evidences`, optional `qa_pairs` |
| `flashrag`  | Bamboogle / FlashRAG jsonl              | none (`golden_answers` only)                     |

>>> q = QuestionRecord(id="x", dataset="demo", question="Who?", answers=["Ann", "Anne"])
>>> QuestionRecord.from_dict(q.to_dict()) == q
True
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .fileio import DataFormatError, iter_json_records, where
from .fileio import field as get

FORMATS = ("musique", "hotpotqa", "2wiki", "flashrag")
"""Question-file formats the loaders read."""


@dataclass(frozen=True)
class Paragraph:
    title: str
    text: str


@dataclass(frozen=True)
class SubQuestion:
    question: str
    """As written in the source; MuSiQue keeps its `#k` placeholders and `X >> relation` form."""
    answer: str
    paragraph: Paragraph | None = None
    """The paragraph that answers it, when the source says which."""


@dataclass(frozen=True)
class QuestionRecord:
    id: str
    dataset: str
    question: str
    answers: list[str]
    """Gold answer first, then aliases."""
    gold_paragraphs: list[Paragraph] = field(default_factory=list)
    sub_questions: list[SubQuestion] = field(default_factory=list)
    type: str = ""
    """Question type when the source gives one (HotpotQA bridge/comparison, 2Wiki types, MuSiQue hop count)."""
    answerable: bool = True
    source: str = ""
    """`file:line` the record was read from."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for sq in d["sub_questions"]:  # a fixed schema for HF datasets: no nulls inside structs
            sq["paragraph"] = sq["paragraph"] or {"title": "", "text": ""}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuestionRecord":
        subs = []
        for sq in d.get("sub_questions") or []:
            p = sq.get("paragraph")
            para = Paragraph(p["title"], p["text"]) if p and (p.get("title") or p.get("text")) else None
            subs.append(SubQuestion(sq["question"], sq["answer"], para))
        return cls(
            id=d["id"],
            dataset=d["dataset"],
            question=d["question"],
            answers=list(d["answers"]),
            gold_paragraphs=[Paragraph(p["title"], p["text"]) for p in d.get("gold_paragraphs") or []],
            sub_questions=subs,
            type=d.get("type", ""),
            answerable=d.get("answerable", True),
            source=d.get("source", ""),
        )


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """Search-R1 / FlashRAG form: ``title\\ntext``."""
        return f"{self.title}\n{self.text}"


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Collapse whitespace; texts are compared in this form (HotpotQA sentences carry leading spaces)."""
    return _WS.sub(" ", text).strip()


def split_contents(contents: str) -> tuple[str, str]:
    r"""FlashRAG / Search-R1 ``contents`` (``title\ntext``, the title sometimes in quotes) -> (title, text).

    >>> split_contents('"Aaron"\nAaron is a prophet.')
    ('Aaron', 'Aaron is a prophet.')
    """
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text


def passage_key(title: str, text: str) -> tuple[str, str]:
    """Key matching a gold paragraph to a corpus passage."""
    return normalize_text(title), normalize_text(text)


def gold_and_sub_paragraphs(record: QuestionRecord) -> list[Paragraph]:
    """Gold paragraphs of a record plus any sub-question paragraph not among them."""
    out = list(record.gold_paragraphs)
    out += [s.paragraph for s in record.sub_questions if s.paragraph is not None and s.paragraph not in out]
    return out


# ----------------------------------------------------------------------------- format detection


def detect_format(obj: dict[str, Any]) -> str:
    if "paragraphs" in obj and "question_decomposition" in obj:
        return "musique"
    if "context" in obj and "supporting_facts" in obj:
        return "2wiki" if "evidences" in obj else "hotpotqa"
    if "golden_answers" in obj:
        return "flashrag"
    raise DataFormatError(f"unrecognised record with keys {sorted(obj)[:12]}; expected one of {FORMATS}")


def load_questions(
    path: Path | str, fmt: str | None = None, dataset: str | None = None, limit: int = 0
) -> list[QuestionRecord]:
    """Read a question file in any supported format into normalised records.

    ``fmt`` is detected from the first record when not given; ``dataset`` defaults to the
    format name (for FlashRAG files, the folder name: ``bamboogle``). Duplicate ids and malformed records raise `DataFormatError` naming file:line.
    """
    path = Path(path)
    records: list[QuestionRecord] = []
    seen: dict[str, int] = {}
    for line, obj in iter_json_records(path):
        if fmt is None:
            try:
                fmt = detect_format(obj)
            except DataFormatError as err:
                raise DataFormatError(f"{where(path, line)}: {err}") from err
        if fmt not in _PARSERS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        rec = _PARSERS[fmt](obj, path, line, dataset or (path.parent.name if fmt == "flashrag" else fmt))
        if rec.id in seen:
            raise DataFormatError(f"{where(path, line)}: duplicate id {rec.id!r} (first at line {seen[rec.id]})")
        seen[rec.id] = line
        records.append(rec)
        if limit and len(records) >= limit:
            break
    return records


def _record_id(obj, path, line) -> str:
    key = "_id" if "_id" in obj else "id"
    value = get(obj, key, (str, int), path, line)
    return str(value)


def _parse_musique(obj, path, line, dataset) -> QuestionRecord:
    paragraphs = get(obj, "paragraphs", list, path, line)
    by_idx: dict[int, Paragraph] = {}
    gold = []
    for i, p in enumerate(paragraphs):
        if not isinstance(p, dict):
            raise DataFormatError(f"{where(path, line)}: paragraphs[{i}] must be an object")
        para = Paragraph(get(p, "title", str, path, line), get(p, "paragraph_text", str, path, line))
        by_idx[get(p, "idx", int, path, line)] = para
        if get(p, "is_supporting", bool, path, line):
            gold.append(para)
    subs = []
    for i, sq in enumerate(get(obj, "question_decomposition", list, path, line)):
        if not isinstance(sq, dict):
            raise DataFormatError(f"{where(path, line)}: question_decomposition[{i}] must be an object")
        support = get(sq, "paragraph_support_idx", int, path, line, optional=True)
        if support is not None and support not in by_idx:
            raise DataFormatError(
                f"{where(path, line)}: question_decomposition[{i}].paragraph_support_idx {support} names no paragraph"
            )
        subs.append(
            SubQuestion(
                get(sq, "question", str, path, line),
                get(sq, "answer", str, path, line),
                by_idx.get(support) if support is not None else None,
            )
        )
    rid = _record_id(obj, path, line)
    aliases = get(obj, "answer_aliases", list, path, line, optional=True) or []
    return QuestionRecord(
        id=rid,
        dataset=dataset,
        question=get(obj, "question", str, path, line),
        answers=_dedupe([get(obj, "answer", str, path, line), *map(str, aliases)]),
        gold_paragraphs=gold,
        sub_questions=subs,
        type=rid.split("__")[0] if "__" in rid else "",
        answerable=bool(obj.get("answerable", True)),
        source=where(path, line),
    )


def _context_paragraphs(obj, path, line, joiner: str) -> dict[str, Paragraph]:
    out: dict[str, Paragraph] = {}
    for i, item in enumerate(get(obj, "context", list, path, line)):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], list)
            or not all(isinstance(s, str) for s in item[1])
        ):
            raise DataFormatError(f"{where(path, line)}: context[{i}] must be [title, [sentences...]]")
        out.setdefault(item[0], Paragraph(item[0], joiner.join(item[1])))
    return out


def _supporting_titles(obj, path, line) -> list[str]:
    titles: list[str] = []
    for i, sf in enumerate(get(obj, "supporting_facts", list, path, line)):
        if not isinstance(sf, list) or len(sf) != 2 or not isinstance(sf[0], str):
            raise DataFormatError(f"{where(path, line)}: supporting_facts[{i}] must be [title, sentence_index]")
        if sf[0] not in titles:
            titles.append(sf[0])
    return titles


def _gold_from_context(obj, path, line, joiner) -> list[Paragraph]:
    context = _context_paragraphs(obj, path, line, joiner)
    gold = []
    for title in _supporting_titles(obj, path, line):
        if title not in context:
            raise DataFormatError(f"{where(path, line)}: supporting fact title {title!r} is not in context")
        gold.append(context[title])
    return gold


def _parse_hotpotqa(obj, path, line, dataset) -> QuestionRecord:
    # HotpotQA sentences carry their own leading spaces: join with "".
    return QuestionRecord(
        id=_record_id(obj, path, line),
        dataset=dataset,
        question=get(obj, "question", str, path, line),
        answers=[get(obj, "answer", str, path, line)],
        gold_paragraphs=_gold_from_context(obj, path, line, ""),
        type=str(obj.get("type") or ""),
        source=where(path, line),
    )


def _parse_2wiki(obj, path, line, dataset) -> QuestionRecord:
    # 2WikiMultiHopQA sentences are joined with a space.
    gold = _gold_from_context(obj, path, line, " ")
    evidences = get(obj, "evidences", list, path, line)
    subs = []
    pairs = get(obj, "qa_pairs", list, path, line, optional=True) or []
    for i, qa in enumerate(pairs):
        if not isinstance(qa, dict):
            raise DataFormatError(f"{where(path, line)}: qa_pairs[{i}] must be an object")
        answer = get(qa, "answer", str, path, line)
        # One evidence triple per hop: its object is the short sub-answer.
        if len(evidences) == len(pairs) and isinstance(evidences[i], list) and len(evidences[i]) == 3:
            answer = str(evidences[i][2])
        para = gold[i] if len(gold) == len(pairs) else None
        subs.append(SubQuestion(get(qa, "question", str, path, line), answer, para))
    if not pairs:
        subs = _subs_from_evidences(evidences, gold, path, line)
    return QuestionRecord(
        id=_record_id(obj, path, line),
        dataset=dataset,
        question=get(obj, "question", str, path, line),
        answers=[get(obj, "answer", str, path, line)],
        gold_paragraphs=gold,
        sub_questions=subs,
        type=str(obj.get("type") or ""),
        source=where(path, line),
    )


def _subs_from_evidences(evidences, gold: list[Paragraph], path, line) -> list[SubQuestion]:
    """2Wiki without ``qa_pairs``: one sub-question per evidence triple (subject, relation, object),
    ``What is the <relation> of <subject>?``, answered by the object, supported by the gold
    paragraph whose title is (or starts with) the subject, when there is one."""
    subs = []
    for i, ev in enumerate(evidences):
        if not (isinstance(ev, list) and len(ev) == 3 and all(isinstance(x, str) for x in ev)):
            raise DataFormatError(f"{where(path, line)}: evidences[{i}] must be [subject, relation, object]")
        subj, rel, obj = ev
        key = normalize_text(subj).lower()
        para = next((p for p in gold if normalize_text(p.title).lower() == key), None) or next(
            (p for p in gold if normalize_text(p.title).lower().startswith(key)), None
        )
        subs.append(SubQuestion(f"What is the {rel} of {subj}?", obj, para))
    return subs


def _parse_flashrag(obj, path, line, dataset) -> QuestionRecord:
    answers = get(obj, "golden_answers", list, path, line)
    if not answers or not all(isinstance(a, (str, int, float)) for a in answers):
        raise DataFormatError(f"{where(path, line)}: field 'golden_answers' must be a non-empty list of strings")
    return QuestionRecord(
        id=_record_id(obj, path, line),
        dataset=dataset,
        question=get(obj, "question", str, path, line),
        answers=_dedupe([str(a) for a in answers]),
        source=where(path, line),
    )


_PARSERS = {"musique": _parse_musique, "hotpotqa": _parse_hotpotqa, "2wiki": _parse_2wiki, "flashrag": _parse_flashrag}


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i != ""))


# ----------------------------------------------------------------------------- corpus


def load_corpus(path: Path | str, limit: int = 0) -> list[Passage]:
    """Read a passage corpus: jsonl with ``id, title, text`` or FlashRAG/Search-R1 ``contents``
    (``"title"\\ntext``), or a DPR-style tsv (``id, text, title``). Duplicate ids are refused."""
    path = Path(path)
    rows = _iter_tsv(path) if path.suffix == ".tsv" else iter_json_records(path)
    passages: list[Passage] = []
    seen: dict[str, int] = {}
    for line, obj in rows:
        pid = str(get(obj, "id", (str, int), path, line))
        if "contents" in obj:
            title, text = split_contents(get(obj, "contents", str, path, line))
        else:
            title, text = get(obj, "title", str, path, line), get(obj, "text", str, path, line)
        if pid in seen:
            raise DataFormatError(f"{where(path, line)}: duplicate passage id {pid!r} (first at line {seen[pid]})")
        seen[pid] = line
        passages.append(Passage(pid, title, text))
        if limit and len(passages) >= limit:
            break
    return passages


def _iter_tsv(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise DataFormatError(f"{path}: the file is empty")
        if [h.strip() for h in header[:3]] != ["id", "text", "title"]:
            raise DataFormatError(f"{where(path, 1)}: expected the header 'id\\ttext\\ttitle', got {header!r}")
        for lineno, row in enumerate(reader, 2):
            if len(row) != 3:
                raise DataFormatError(f"{where(path, lineno)}: expected 3 tab-separated fields, got {len(row)}")
            yield lineno, {"id": row[0], "text": row[1], "title": row[2]}
