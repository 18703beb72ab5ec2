"""One hop from each notebook equation to its code and its test.

Every display equation (``$$ ... $$``) in a notebook is followed by a ``Code:`` line naming the functions that
compute it and a ``Test:`` list naming the tests that pin it; the first function's docstring carries the
equation in LaTeX. This file checks those links and holds the hand-computed tests of the equations that had
none (dense and BM25 scores, recall@k, the SFT loss).
"""

import json
import math
import re
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest
import torch

from stepsearch_lib.data import Passage
from stepsearch_lib.demonstrations import completion_loss
from stepsearch_lib.index import build_bm25_index, build_dense_index
from stepsearch_lib.models import build_tiny_model
from stepsearch_lib.recall import RecallQuery, recall_rows
from stepsearch_lib.retrieval import (
    BM25Retriever,
    DenseRetriever,
    Hit,
    Retriever,
    load_retriever,
)

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"^Code: (?P<code>.+?) · Test: (?P<tests>.+)$", re.M)


def equation_cells() -> list[tuple[str, int, str]]:
    out = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(cell["source"])
            if cell["cell_type"] == "markdown" and "$$" in src:
                out.append((nb.name, i, src))
    return out


def links(src: str) -> list[tuple[list[str], list[str]]]:
    """(functions, test node ids) of each ``Code: ... · Test: ...`` line, ``::name`` expanded to the last file."""
    out = []
    for m in LINK.finditer(src):
        code = re.findall(r"`([\w.]+)`", m["code"])
        tests, last = [], None
        for t in re.findall(r"`([\w/.:\[\]-]+)`", m["tests"]):
            if t.startswith("::"):
                t = f"{last}{t}"
            last = t.split("::")[0]
            tests.append(t)
        out.append((code, tests))
    return out


def resolve(name: str):
    module, _, attr = name.rpartition(".")
    obj = import_module(f"stepsearch_lib.{module}")
    return getattr(obj, attr)


CELLS = equation_cells()
ALL_TESTS = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))


@pytest.mark.parametrize("notebook, index, src", CELLS, ids=[f"{n}[{i}]" for n, i, _ in CELLS])
def test_every_equation_names_its_code_and_its_test(notebook, index, src):
    equations = len(re.findall(r"\$\$(.+?)\$\$", src, re.S))
    found = links(src)
    assert len(found) == equations, f"{notebook} cell {index}: {equations} equations but {len(found)} Code/Test lines"
    for code, tests in found:
        assert code and tests
        first = resolve(code[0])
        assert "$" in (first.__doc__ or ""), f"{code[0]}'s docstring does not carry its equation in LaTeX"
        for name in code:
            resolve(name)
            assert re.search(rf"\b{re.escape(name.rpartition('.')[2])}\b", ALL_TESTS), f"no test uses {name}"
        for node in tests:
            file, _, func = node.partition("::")
            assert (ROOT / file).is_file(), node
            assert re.search(rf"^def {re.escape(func.split('[')[0])}\(", (ROOT / file).read_text(), re.M), node


def test_the_link_parser_expands_short_test_ids():
    src = "$$x$$\nCode: `rewards.best_f1` · Test: `tests/test_rewards.py::test_a`, `::test_b`\n"
    assert links(src) == [(["rewards.best_f1"], ["tests/test_rewards.py::test_a", "tests/test_rewards.py::test_b"])]


# ----------------------------------------------------------------------------- hand-computed equations


PASSAGES = [Passage("p1", "cat", "cat dog"), Passage("p2", "dog", "dog dog"), Passage("p3", "bird", "fish")]


def test_bm25_score_by_hand(tmp_path):
    """q = "cat": only p1 has it, f = 2, |d| = 3 tokens, mean |d| = 8/3, N = 3, df = 1, k1 = 1.5, b = 0.75."""
    build_bm25_index(PASSAGES, tmp_path / "bm25")
    retriever = load_retriever(tmp_path / "bm25")
    assert isinstance(retriever, BM25Retriever)
    hits = retriever.search("cat", 3)
    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # = ln(8/3) = 0.98083
    tf = 2 / (2 + 1.5 * (1 - 0.75 + 0.75 * 3 / (8 / 3)))  # = 2 / 3.640625 = 0.54936
    assert [h.passage.id for h in hits] == ["p1"]
    assert hits[0].score == pytest.approx(idf * tf, rel=1e-5)
    assert hits[0].score == pytest.approx(0.538826, abs=1e-5)


def test_dense_score_is_the_inner_product_of_unit_embeddings(tmp_path, encoder):
    build_dense_index(PASSAGES, encoder, tmp_path / "dense")
    retriever = load_retriever(tmp_path / "dense", encoder=encoder)
    assert isinstance(retriever, DenseRetriever)
    hits = retriever.search("a small cat", 3)
    q = encoder.encode_queries(["a small cat"])[0]
    for h in hits:
        d = encoder.encode_passages([f"{h.passage.title}. {h.passage.text}"])[0]
        assert np.linalg.norm(d) == pytest.approx(1, abs=1e-5)
        assert h.score == pytest.approx(float(q @ d), abs=1e-5)
    assert hits[0].passage.id == "p1"


class FixedRanking(Retriever):
    def __init__(self, ranked: dict[str, list[str]]):
        self.ranked = ranked

    def _batch_search(self, queries, k):
        return [[Hit(Passage(pid, pid, ""), 1.0) for pid in self.ranked[q][:k]] for q in queries]


def test_recall_at_k_by_hand():
    """q1: gold {a, b}, ranked a x b -> recall@1 = 1/2, @3 = 1; q2: gold {c}, ranked x y c -> 0, 1. Means: 1/4, 1."""
    retriever = FixedRanking({"q1": ["a", "x", "b"], "q2": ["x", "y", "c"]})
    queries = [RecallQuery("g", "q1", frozenset({"a", "b"})), RecallQuery("g", "q2", frozenset({"c"}))]
    rows = {r["k"]: r["recall"] for r in recall_rows(retriever, queries, ks=(1, 2, 3))}
    assert rows == {1: 0.25, 2: 0.25, 3: 1.0}


def test_sft_loss_is_the_mean_log_loss_over_completion_tokens(tokenizer):
    """L = -(1 / sum m) sum_t m_t log pi(y_t | y_<t), from the full logits, on 2 rows with masked prompt / info."""
    model = build_tiny_model(tokenizer, hidden_size=32, layers=1, seed=0)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1, 0, 1], [0, 1, 1, 0, 0]])  # completion tokens: (0,2) (0,4) (1,1) (1,2)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
        terms = [logp[0, 1, 7], logp[0, 3, 9], logp[1, 0, 11], logp[1, 1, 12]]  # token t scored at position t - 1
        expected = -sum(terms) / 4
        got = completion_loss(model, ids, attn, mask)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
