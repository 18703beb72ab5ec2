"""The search protocol: prompt templates, tags, document rendering, and parsing model text.

An episode is ``prompt -> (reasoning, <search> q </search>, <information> docs </information>)*
-> reasoning, <answer> a </answer>``. Two tag sets are provided: ``think`` (the paper's figures,
Search-R1) and ``plan`` (the released training prompt, which asks for a plan before searching
and an observation after each information block). The wording is ours.

>>> parse_action("I should look this up. <search> Dai Jitao country </search>")
Action(kind='search', content='Dai Jitao country')
>>> parse_action("<think>ok</think><answer> China </answer> trailing")
Action(kind='answer', content='China')
>>> split_docs(render_docs([("Dai Jitao", "A Chinese journalist."), ("China", "A country.")]))
['Dai Jitao A Chinese journalist.', 'China A country.']
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
    "\n<warning>That was not a valid action. To search, write <search> query </search>; to finish, write "
    "<answer> final answer </answer>.</warning>\n"
)
"""Forced after a turn that neither searched nor answered (the episode continues)."""

LAST_SEARCH_WARNING = (
    "\n<warning>No more searches are possible. Give your final answer now inside <answer> and </answer>."
    "</warning>\n"
)
"""Forced after the last allowed search."""


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
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


@dataclass(frozen=True)
class Action:
    kind: str
    """``search``, ``answer`` or ``invalid``."""
    content: str = ""


_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.S)


def parse_action(turn_text: str) -> Action:
    """The first complete ``<search>``/``<answer>`` block of a turn. Unclosed tags, empty
    contents and nested tags of the same kind are invalid."""
    m = _ACTION.search(turn_text)
    if not m:
        return Action("invalid")
    kind, content = m.group(1), m.group(2).strip()
    if not content or f"<{kind}>" in content:
        return Action("invalid")
    return Action(kind, content)


def cut_at_stop(text: str, stops: Sequence[str] = STOP_STRINGS) -> tuple[str, bool]:
    """Text up to and including the first stop string, and whether one was found."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return (text[: min(ends)], True) if ends else (text, False)


_DOC_HEAD = re.compile(r"Doc \d+\(Title: ")


def cut_words(text: str, n: int) -> str:
    """The first ``n`` words of a passage (``n`` <= 0 keeps it whole)."""
    return text if n <= 0 else " ".join(text.split()[:n])


def render_docs(docs: Sequence[tuple[str, str]]) -> str:
    """``Doc i(Title: T) text`` lines, one per retrieved (title, text)."""
    return "".join(f"Doc {i}(Title: {title}) {text}\n" for i, (title, text) in enumerate(docs, 1))


def information_block(docs: Sequence[tuple[str, str]]) -> str:
    """The forced block appended after a search (wrapped in blank lines)."""
    return f"\n\n<information>{render_docs(docs)}</information>\n\n"


def split_docs(rendered: str) -> list[str]:
    """Split rendered documents back into ``title text`` strings (what the rewards compare)."""
    parts = _DOC_HEAD.split(rendered)[1:]
    out = []
    for part in parts:
        title, _, text = part.partition(") ")
        out.append(f"{title} {text.strip()}".strip())
    return out


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
