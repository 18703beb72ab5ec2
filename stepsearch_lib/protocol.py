r"""The search protocol: prompt templates, tags, document rendering, and parsing model text.

An episode is ``prompt -> (reasoning, <search> q </search>, <information> docs </information>)*
-> reasoning, <answer> a </answer>``. Two tag sets are provided: ``think`` (the paper's figures,
Search-R1) and ``plan`` (the released training prompt, which asks for a plan before searching
and an observation after each information block). The wording is ours.

>>> parse_action("I should look this up. <search> Dai Jitao country </search>")
Action(kind='search', content='Dai Jitao country')
>>> parse_action("<think>ok</think><answer> China </answer> trailing")
Action(kind='answer', content='China')

Retrieved documents are rendered in one of three styles (`RolloutConfig.doc_render`), and the
reward splits the block back with the same style's splitter:

>>> docs = [("Dai Jitao", "A Chinese journalist."), ("China", "A country.")]
>>> information_block(docs, "released")
'\n\n<information> Doc 1<## Title: Dai Jitao ##> A Chinese journalist.\nDoc 2<## Title: China ##> A country. </information>\n\n'
>>> split_docs(information_block(docs, "released"), "released")  # the released splitter keeps the next label
['A Chinese journalist.\nDoc 2', 'A country.']
>>> information_block(docs, "search_r1")
'\n\n<information>Doc 1(Title: "Dai Jitao") A Chinese journalist.\nDoc 2(Title: "China") A country.</information>\n\n'
>>> split_docs(information_block(docs, "ours"), "ours")
['A Chinese journalist.', 'A country.']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Template:
    name: str
    reasoning_tag: str
    instructions: str
    """Prompt text with a ``{question}`` field."""


_THINK = (
    "Answer the question below. Reason step by step inside <think> and </think> whenever you get new "
    "information. When you are missing knowledge, search for it by writing <search> your query </search>; "
    "the top results will be returned between <information> and </information>. You may search several "
    "times, one query at a time. When you know enough, give only the final answer, as short as possible, "
    "inside <answer> and </answer>, for example <answer> Paris </answer>.\nQuestion: {question}\n"
)
_PLAN = (
    "Answer the question below. First write a plan inside <plan> and </plan> that breaks the question into "
    "the facts you need. To look a fact up, write <search> your query </search>; the top results will be "
    "returned between <information> and </information>, and you then note what you learned inside "
    "<observation> and </observation>. Search one fact at a time, as often as needed. When you know enough, "
    "give only the final answer, as short as possible, inside <answer> and </answer>, for example "
    "<answer> Paris </answer>.\nQuestion: {question}\n"
)
TEMPLATES = {"think": Template("think", "think", _THINK), "plan": Template("plan", "plan", _PLAN)}
"""Prompt templates by name (`RolloutConfig.template`)."""

STOP_STRINGS = ("</search>", "</answer>")
"""A turn ends at the first of these."""

INVALID_ACTION_WARNING = (
    "\n<warning> That was not a valid action. To search, I write my query inside <search> and </search>; to "
    "finish, I write the final answer inside <answer> and </answer>. Let me continue. </warning>\n"
)
"""Forced after a turn that neither searched nor answered (the episode continues). The released
spacing (a newline on each side, spaces inside the tags); the wording is ours."""

LAST_SEARCH_WARNING = (
    "<warning> I cannot search any more. I must answer from what I have found: next I give my final "
    "answer inside <answer> and </answer>. </warning>\n\n"
)
"""Appended to the observation of the last round in which searching is allowed (after an
information block, which ends in a blank line, or after the invalid-action warning)."""


DIRECT_PROMPT = (
    "Answer the question below from your own knowledge. Give only the final answer, as short as possible, "
    "inside <answer> and </answer>, for example <answer> Paris </answer>.\nQuestion: {question}\n"
)
"""Naive generation (no retrieval) baseline prompt."""

RAG_PROMPT = (
    "Answer the question below using the documents. Give only the final answer, as short as possible, "
    "inside <answer> and </answer>, for example <answer> Paris </answer>.\n{docs}Question: {question}\n"
)
"""Single-shot RAG baseline prompt (documents retrieved on the question)."""


def build_prompt(question: str, template: str = "think", tokenizer=None) -> str:
    """The episode prompt; wrapped in the tokenizer's chat template when it has one."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {sorted(TEMPLATES)}")
    return chat_wrap(TEMPLATES[template].instructions.format(question=question.strip()), tokenizer)


def chat_wrap(text: str, tokenizer=None) -> str:
    """A user message in the tokenizer's chat template (plain text when it has none)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


@dataclass(frozen=True)
class Action:
    kind: str
    """``search``, ``answer`` or ``invalid``."""
    content: str = ""


_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.S)


def parse_action(turn_text: str, lenient: bool = False) -> Action:
    """The first complete ``<search>``/``<answer>`` block of a turn. Unclosed tags are invalid.

    ``lenient=False`` (`strict` turn logic): empty contents and nested tags of the same kind are invalid too.
    ``lenient=True`` (`released` turn logic): they are actions, as the released parser takes them.

    >>> parse_action("<search></search>"), parse_action("<search></search>", lenient=True)
    (Action(kind='invalid', content=''), Action(kind='search', content=''))
    >>> parse_action("<search> a <search> b </search>", lenient=True)
    Action(kind='search', content='a <search> b')
    """
    m = _ACTION.search(turn_text)
    if not m:
        return Action("invalid")
    kind, content = m.group(1), m.group(2).strip()
    if not lenient and (not content or f"<{kind}>" in content):
        return Action("invalid")
    return Action(kind, content)


def key_query(search_block_content: str) -> str:
    """The query text the search-key reward scores: the block's content with any inner search tags
    removed (the released reward strips ``<search>`` / ``</search>`` from each block).

    >>> key_query(" a <search> b ")
    'a  b'
    """
    return re.sub(r"</?search>", "", search_block_content).strip()


def cut_at_stop(text: str, stops: Sequence[str] = STOP_STRINGS) -> tuple[str, bool]:
    """Text up to and including the first stop string, and whether one was found."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return (text[: min(ends)], True) if ends else (text, False)


RENDERINGS = ("released", "search_r1", "ours")
"""Document rendering styles (`RolloutConfig.doc_render`)."""

_DOC_HEAD = re.compile(r"Doc \d+\(Title: ")
_LABEL_TAIL = re.compile(r"\s*Doc \d+$")


def cut_words(text: str, n: int) -> str:
    """The first ``n`` words of a passage (``n`` <= 0 keeps it whole)."""
    return text if n <= 0 else " ".join(text.split()[:n])


def _check_style(style: str) -> None:
    if style not in RENDERINGS:
        raise ValueError(f"unknown document rendering {style!r}; expected one of {', '.join(RENDERINGS)}")


def render_docs(docs: Sequence[tuple[str, str]], style: str = "ours") -> str:
    """One line per retrieved (title, text): ``released`` ``Doc i<## Title: T ##> text``, ``search_r1``
    ``Doc i(Title: "T") text`` (Search-R1 keeps wiki-18's quotes), ``ours`` ``Doc i(Title: T) text``."""
    _check_style(style)
    if style == "released":
        return "".join(f"Doc {i}<## Title: {title} ##> {text}\n" for i, (title, text) in enumerate(docs, 1))
    quote = '"' if style == "search_r1" else ""
    return "".join(f"Doc {i}(Title: {quote}{title}{quote}) {text}\n" for i, (title, text) in enumerate(docs, 1))


def information_block(docs: Sequence[tuple[str, str]], style: str = "ours") -> str:
    """The forced block appended after a search. ``released``: ``\\n\\n<information> {docs} </information>\\n\\n``
    (rendered text stripped); ``search_r1``: the same without the inner spaces; ``ours``: unstripped, no spaces."""
    rendered = render_docs(docs, style)
    if style == "released":
        return f"\n\n<information> {rendered.strip()} </information>\n\n"
    if style == "search_r1":
        return f"\n\n<information>{rendered.strip()}</information>\n\n"
    return f"\n\n<information>{rendered}</information>\n\n"


def information_content(observation: str) -> str:
    """The text between ``<information>`` and ``</information>`` of an observation, stripped (to the end
    when the observation cap cut the closing tag off)."""
    _, _, rest = observation.partition("<information>")
    return rest.split("</information>")[0].strip()


def split_docs(block: str, style: str = "ours") -> list[str]:
    """The documents of a rendered block (or of a whole observation) as the reward compares them.

    ``released``: the released splitter, literally -- the text after each ``##>`` up to the next ``<##``,
    stripped; every piece but the last keeps the next document's ``Doc k`` label. ``search_r1`` / ``ours``:
    each document's text after its ``Doc i(Title: ...)`` head."""
    _check_style(style)
    content = information_content(block) if "<information>" in block else block
    if style == "released":
        return [piece.split("<##")[0].strip() for piece in content.split("##>")[1:]]
    return [_after_title(part).strip() for part in _DOC_HEAD.split(content)[1:]]


def _after_title(part: str) -> str:
    """The text after the title's closing parenthesis (titles may hold balanced parentheses themselves)."""
    depth = 1
    for i, ch in enumerate(part):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return part[i + 1 :]
    return ""


def doc_identity(piece: str) -> str:
    """A split piece without the trailing ``Doc k`` label the released splitter leaves on it.

    >>> doc_identity("A Chinese journalist.\\nDoc 2")
    'A Chinese journalist.'
    """
    return _LABEL_TAIL.sub("", piece)


_ANSWER_AT_END = re.compile(r"<answer>(.*?)</answer>\s*$", re.S)
_ANSWERS = re.compile(r"<answer>(.*?)</answer>", re.S)


def ends_with_answer(response: str) -> bool:
    """The format gate: the response ends with a complete ``<answer>...</answer>`` block."""
    return _ANSWER_AT_END.search(response) is not None


def extract_answer(response: str) -> str | None:
    """The content of the last answer block, or None."""
    found = _ANSWERS.findall(response)
    return found[-1].strip() if found else None


def extract_queries(response: str) -> list[str]:
    """Every non-empty ``<search>`` query of a response, in order."""
    return [q.strip() for q in re.findall(r"<search>(.*?)</search>", response, re.S) if q.strip()]


def page_of(episode: str, max_lines: int = 40, max_line_chars: int = 300) -> str:
    """An episode's text cut to what fits a page for display: blank runs become one blank line, a line repeated in
    a row (a warning the model earned every turn) is shown once with its count, long lines (an information block)
    and the whole are cut, each cut saying what it left out. The text itself is what the model saw; only the view
    is shortened.

    >>> print(page_of("<search> a </search>\\n\\n\\n\\n" + "<warning> no </warning>\\n" * 3 + "x" * 30, 9, 24))
    <search> a </search>
    <BLANKLINE>
    <warning> no </warning>   [x3]
    xxxxxxxxxxxxxxxxxxxxxxxx... [6 more characters]
    """
    lines: list[str] = []
    repeats: list[int] = []
    for line in episode.splitlines():
        line = line.rstrip()
        if lines and line == lines[-1] and (line or repeats[-1]):
            repeats[-1] += 1  # a blank run or a repeated line
            continue
        lines.append(line)
        repeats.append(1)
    shown = []
    for line, n in zip(lines, repeats):
        if len(line) > max_line_chars:
            line = f"{line[:max_line_chars]}... [{len(line) - max_line_chars} more characters]"
        shown.append(f"{line}   [x{n}]" if n > 1 and line else line)
    if len(shown) > max_lines:
        shown = shown[:max_lines] + [f"... [{len(shown) - max_lines} more lines]"]
    return "\n".join(shown)
