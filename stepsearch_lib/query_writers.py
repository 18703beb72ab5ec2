"""Query writers: turn a sub-question into candidate search queries.

One interface, `QueryWriter.write_batch(sub_questions) -> list[list[str]]`, three routes:

* `RuleWriter` -- offline and deterministic: the resolved sub-question, its keyword form,
  and an entity + relation form.
* `LocalChatWriter` -- a local HF chat model (default: the embedded SmolLM2) prompted for queries.
* `OpenAIWriter` -- any OpenAI-compatible ``/chat/completions`` endpoint (base URL, model and
  key from the environment), the paper's GPT-4o route.

Model output is parsed by `parse_queries`; lines that are not usable queries are dropped and
counted in ``writer.stats`` (``malformed``), never raised.

>>> RuleWriter().write_batch(["What is the place of birth of Albert, King of Sweden?"])[0]
['What is the place of birth of Albert, King of Sweden?', 'place birth Albert King Sweden', 'Albert, King of Sweden place of birth']
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from typing import Sequence

STOPWORDS = frozenset(
    "a an the of in on at to for from by with about as is are was were be been being do does did what which who "
    "whom whose when where why how that this these those it its his her their there and or not".split()
)
"""Words dropped by the keyword form (question words and function words)."""

PROMPT = (
    "Write {n} different web search queries that would find the answer to this question.\n"
    "Question: {question}\n"
    "Answer with one query per line and nothing else."
)
"""Prompt of the model-based writers ({n}: queries wanted, {question}: the sub-question)."""


class QueryWriter:
    """Base class: ``name`` identifies the writer in counts; ``stats`` counts parsed / malformed lines."""

    name = "base"

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def write_batch(self, sub_questions: Sequence[str]) -> list[list[str]]:
        raise NotImplementedError


def keyword_form(text: str) -> str:
    """Content words of a question, in order."""
    words = re.findall(r"[\w'’-]+", text)
    return " ".join(w for w in words if w.lower() not in STOPWORDS)


# "What is the R of E?": R may itself contain "of" (place of birth); E starts at the first
# "of" followed by a capitalised word or a digit.
_REL = re.compile(r"^[Ww]hat is the (?P<rel>.+?) of (?P<ent>[A-Z0-9].*?)\??$")


def entity_relation_form(text: str) -> str:
    """``What is the R of E?`` -> ``E R``; otherwise capitalised spans first, then the other keywords."""
    m = _REL.match(text.strip())
    if m:
        return f"{m.group('ent')} {m.group('rel')}"
    spans = re.findall(r"(?:[A-Z][\w'’.-]*)(?:\s+(?:of|the|de|von|[A-Z][\w'’.-]*))*", text)
    spans = [s for s in spans if s.lower() not in STOPWORDS]
    rest = [w for w in keyword_form(text).split() if not any(w in s for s in spans)]
    return " ".join(spans[1:] if spans and spans[0].split()[0].lower() in STOPWORDS else spans + rest).strip()


class RuleWriter(QueryWriter):
    name = "rules"

    def write_batch(self, sub_questions: Sequence[str]) -> list[list[str]]:
        out = []
        for q in sub_questions:
            queries = list(dict.fromkeys(x for x in (q.strip(), keyword_form(q), entity_relation_form(q)) if x))
            self.stats["queries"] += len(queries)
            out.append(queries)
        return out


_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|query\s*\d*\s*:)\s*", re.I)


def parse_queries(text: str, max_queries: int = 5, max_words: int = 32, stats: Counter | None = None) -> list[str]:
    """Queries from a model's answer: one per line; bullets, numbering and quotes stripped.

    Empty lines are skipped; lines that are too long, contain tags or are repeats are dropped
    and counted as ``malformed`` in ``stats``.

    >>> parse_queries('1. "Dai Jitao nationality"\\n- Dai Jitao country\\n\\n<tool>x</tool>')
    ['Dai Jitao nationality', 'Dai Jitao country']
    """
    stats = stats if stats is not None else Counter()
    out: list[str] = []
    for line in text.splitlines():
        q = _BULLET.sub("", line).strip().strip("\"'“”`").strip()
        if not q:
            continue
        if len(q.split()) > max_words or "<" in q or ">" in q or q.lower() in (x.lower() for x in out):
            stats["malformed"] += 1
            continue
        out.append(q)
    stats["parsed"] += len(out[:max_queries])
    if not out:
        stats["empty_generations"] += 1
    return out[:max_queries]


class LocalChatWriter(QueryWriter):
    """Queries from a local chat model (batched greedy generation with left padding)."""

    name = "local_llm"

    def __init__(
        self, model, tokenizer, n: int = 3, max_new_tokens: int = 48, batch_size: int = 16, max_items: int = 0
    ):
        """``max_items`` > 0 writes for the first that many sub-questions only (a CPU budget); the
        rest get no queries from this writer and are counted as ``skipped``."""
        super().__init__()
        self.model, self.tok, self.n, self.max_new_tokens, self.batch_size = (
            model,
            tokenizer,
            n,
            max_new_tokens,
            batch_size,
        )
        self.max_items = max_items

    def _prompt(self, question: str) -> str:
        msg = PROMPT.format(n=self.n, question=question)
        if self.tok.chat_template:
            return self.tok.apply_chat_template(
                [{"role": "user", "content": msg}], tokenize=False, add_generation_prompt=True
            )
        return msg + "\n"

    def write_batch(self, sub_questions: Sequence[str]) -> list[list[str]]:
        import torch
        from tqdm.auto import tqdm

        out: list[list[str]] = []
        self.model.eval()
        todo = len(sub_questions) if self.max_items <= 0 else min(self.max_items, len(sub_questions))
        self.stats["skipped"] += len(sub_questions) - todo
        for start in tqdm(range(0, todo, self.batch_size), desc="local LLM queries", unit="batch"):
            batch = [self._prompt(q) for q in sub_questions[start : min(start + self.batch_size, todo)]]
            enc = self.tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = self.model.generate(
                    **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id
                )
            texts = self.tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [parse_queries(t, self.n, stats=self.stats) for t in texts]
        return out + [[] for _ in range(len(sub_questions) - todo)]


class OpenAIWriter(QueryWriter):
    """Any OpenAI-compatible chat endpoint. Defaults come from ``OPENAI_BASE_URL``,
    ``OPENAI_MODEL`` and ``OPENAI_API_KEY``. Failed or malformed answers count as malformed."""

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        n: int = 3,
        timeout_s: float = 60.0,
        retries: int = 2,
        backoff_s: float = 1.0,
    ):
        import httpx

        super().__init__()
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.model = model or os.environ.get("OPENAI_MODEL") or "gpt-4o"
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise ValueError("OpenAIWriter needs an API key: pass api_key or set OPENAI_API_KEY")
        self.n, self.retries, self.backoff_s = n, retries, backoff_s
        self.client = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {key}"})

    def _ask(self, question: str) -> str | None:
        import httpx

        payload = {
            "model": self.model,
            "temperature": 0.7,
            "messages": [{"role": "user", "content": PROMPT.format(n=self.n, question=question)}],
        }
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self.client.post(f"{self.base_url}/chat/completions", json=payload)
            except httpx.TransportError:
                self.stats["transport_errors"] += 1
                continue
            if resp.status_code in (429,) or resp.status_code >= 500:
                self.stats[f"http_{resp.status_code}"] += 1
                continue
            if resp.status_code >= 400:
                raise RuntimeError(
                    f"{self.base_url}/chat/completions refused the request ({resp.status_code}): {resp.text[:300]}"
                )
            try:
                content = resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                self.stats["malformed"] += 1
                return None
            return content if isinstance(content, str) else None
        self.stats["failed_requests"] += 1
        return None

    def write_batch(self, sub_questions: Sequence[str]) -> list[list[str]]:
        out = []
        for q in sub_questions:
            content = self._ask(q)
            out.append(parse_queries(content, self.n, stats=self.stats) if content is not None else [])
        return out
