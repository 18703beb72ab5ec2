"""Every numbered notebook runs headlessly with papermill on the smoke profile, and is thin."""

import ast
import json
import re
from pathlib import Path

import pytest
from reliability_stats import record

from stepsearch_lib.reproduce import compare_runs, kernel_metadata, notebook_paths, run_notebook

NOTEBOOKS = notebook_paths()


TIMED = re.compile(r"(seconds|_s\b|\bs\b|rss|_mb\b|\bMB\b|wall|elapsed|time/|it/s|q/s|QPS|min\b)")
"""Displayed outputs that mention timings or memory are not compared between runs."""
WIDGET = "application/vnd.jupyter.widget-view+json"
"""The mime type of an ipywidgets display: in these notebooks, only tqdm progress bars."""


def notebook_outputs(path: Path | str, root: Path | str | None = None) -> list[str]:
    """The text a notebook displays (stdout, results; images as their presence), with the artifact
    ``root`` written as ``<root>``; an output that shows timings or memory readings is kept as the
    marker ``<timed>``. A cell's stdout is one item: how the kernel splits it into stream outputs
    depends on when stderr (progress bars) interleaves with it, which is timing, not content.
    Progress-bar widgets (tqdm.auto in a kernel) are left out like stderr: which libraries draw one
    for a short loop varies between runs (CI once saw 10 bars in one run of notebook 01, 11 in the next)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for cell in nb["cells"]:
        stdout = None
        for o in cell.get("outputs", []):
            if WIDGET in o.get("data", {}):
                continue
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                if stdout is None:
                    stdout = len(out)
                    out.append("")
                out[stdout] += "".join(o["text"])
            if "text/plain" in o.get("data", {}):
                out.append("".join(o["data"]["text/plain"]))
            if "image/png" in o.get("data", {}):
                out.append("<image/png>")
    out = [x.replace(str(root), "<root>") for x in out] if root else out
    return ["<timed>" if TIMED.search(x) else x for x in out]


def test_a_cells_stdout_compares_whole_however_progress_bars_split_it(tmp_path):
    """CI once saw one run of notebook 01 show a cell's printed lines as two stream outputs and the
    other as three (tqdm's stderr landed between them at different moments), and another run draw one
    more progress-bar widget than the run before it."""

    def stream(name, text):
        return {"output_type": "stream", "name": name, "text": text}

    def written(name, outputs):
        cell = {"cell_type": "code", "source": "", "outputs": outputs}
        table = {"output_type": "execute_result", "data": {"text/plain": "count 3"}}
        path = tmp_path / name
        path.write_text(json.dumps({"cells": [cell, {**cell, "outputs": [table]}]}))
        return path

    one = written(
        "one.ipynb", [stream("stdout", "a\n"), stream("stderr", "50%"), stream("stdout", "b took 3 seconds\n")]
    )
    bar = {"output_type": "display_data", "data": {WIDGET: {"model_id": "x"}, "text/plain": "Map: 0%| 0/2"}}
    two = written("two.ipynb", [stream("stdout", "a\nb took 4 seconds\n"), bar, stream("stderr", "100%")])
    assert notebook_outputs(one) == notebook_outputs(two) == ["<timed>", "count 3"]
    assert notebook_outputs(written("three.ipynb", [stream("stdout", "a\n")])) == ["a\n", "count 3"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_thin_and_parameterised(nb):
    cells = json.loads(nb.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown"
    head = "".join(cells[0]["source"])
    assert head.startswith("# ") and "**Inputs**" in head and "**Outputs**" in head
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0].get("metadata", {}).get("tags", [])
    for i, c in enumerate(code):
        src = "".join(c["source"])
        assert not re.search(r"^\s*(def|class)\s", src, re.M), src
        if i < len(code) - 1:  # loops belong in the library; only the final check cell walks its outputs
            assert not any(isinstance(n, (ast.For, ast.While)) for n in ast.walk(ast.parse(src))), src
        assert "execution" not in c.get("metadata", {})


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """All notebooks in order on the smoke profile, sharing one artifact root (each reads the
    previous ones' outputs), as `make reproduce PROFILE=smoke` runs them."""
    root = tmp_path_factory.mktemp("nb")
    for nb in NOTEBOOKS:
        run_notebook(
            nb, root / "executed", {"PROFILE": "smoke", "SEED": 0, "OVERRIDES": {"artifact_root": str(root / "runs")}}
        )
    return root / "executed"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke(nb, executed):
    out = json.loads((executed / nb.name).read_text())
    errors = [o for c in out["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert "outputs ok" in json.dumps(out["cells"][-1].get("outputs", [])) or "kept" in json.dumps(out["cells"][-1])


def test_running_the_notebooks_twice_gives_the_same_results(executed, tmp_path):
    """A second run of every notebook (same seed, fresh artifact root) writes the same artifacts --
    data, indexes, reward tables, checkpoints, metrics, evaluation, figures -- up to timings and
    memory readings, and displays the same outputs."""
    for nb in NOTEBOOKS:
        run_notebook(
            nb,
            tmp_path / "executed",
            {"PROFILE": "smoke", "SEED": 0, "OVERRIDES": {"artifact_root": str(tmp_path / "runs")}},
        )
    first, second = executed.parent / "runs" / "smoke", tmp_path / "runs" / "smoke"
    assert compare_runs(first, second) == []
    record(
        "artifacts: files compared between two runs of every notebook",
        sum(1 for p in first.rglob("*") if p.is_file() and p.relative_to(first).parts[0] != "notebooks"),
    )
    for nb in NOTEBOOKS:
        shown = notebook_outputs(executed / nb.name, executed.parent / "runs")
        assert shown == notebook_outputs(tmp_path / "executed" / nb.name, tmp_path / "runs"), nb.name
        assert sum(x != "<timed>" for x in shown) >= len(shown) // 2  # most outputs are compared exactly


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_metadata_is_what_the_kernel_writes(nb):
    """Opening a notebook in JupyterLab (kernelspec) and starting its kernel (language_info) leaves it unmodified."""
    assert json.loads(nb.read_text())["metadata"] == kernel_metadata()
