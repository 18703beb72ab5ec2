"""``stepsearch reproduce --profile cpu``: run the numbered notebooks in order.

Each ``notebooks/NN_*.ipynb`` is executed with papermill (parameters ``PROFILE`` and
``SEED``); the executed copy goes to ``runs/<profile>/notebooks/``; the notebooks write
their figures to ``figures/``. A failing notebook stops the run with its error, and its
partial executed copy is not left behind.

On the cpu profile the local run uses `QUICK` settings (``--full``: the profile's own).

``--write-back`` (smoke or cpu profile) stores the executed notebooks back into ``notebooks/``
with execution metadata, injected-parameter cells and stderr streams stripped: the committed
notebooks show the real model's (cpu) outputs, and ``pytest --nbval-lax notebooks/`` re-runs them on smoke.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from .cli import UsageError, add_config_args, door
from .config import PROJECT_ROOT, get_config
from .fileio import atomic_path
from .overrides import parse_cli_overrides

QUICK = {
    "train.sft_examples": 80,
    "train.sft_eval_questions": 8,
    "train.steps": 4,
    "eval.questions_per_dataset": 6,
}
"""The cpu profile's *local run* under ``make reproduce``: a shorter warm start (80 demonstrations, checked on 8 dev
questions), RL run (4 updates) and evaluation (6 questions per dataset) than the profile's, so that the five
notebooks finish within 90 minutes on 2 cores from an empty machine. It shows the mechanics on this machine; the
science figures of notebooks 04 and 05 read the committed cpu study (`study_results.RESULTS`). ``--full``: the profile's
own sizes."""


def local_run_overrides(profile: str, overrides: dict, full: bool = False) -> dict:
    """The overrides the notebooks run with: `QUICK` under the caller's own on the cpu profile (unless ``full``).

    >>> local_run_overrides("cpu", {"train.steps": 2})["train.steps"], local_run_overrides("smoke", {})
    (2, {})
    """
    return {**QUICK, **overrides} if profile == "cpu" and not full else dict(overrides)


def notebook_paths(folder: Path = PROJECT_ROOT / "notebooks") -> list[Path]:
    """The numbered notebooks (``01_...`` to ``99_...``) in run order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(src: Path, out_dir: Path, parameters: dict) -> float:
    """Execute one notebook with papermill into ``out_dir``; return its wall time in seconds."""
    import papermill as pm

    start = time.perf_counter()
    with atomic_path(out_dir / src.name) as tmp:
        pm.execute_notebook(
            str(src), str(tmp), parameters=parameters, cwd=str(src.parent), kernel_name="python3", progress_bar=False
        )
    return time.perf_counter() - start


def kernel_metadata() -> dict:
    """The notebook metadata JupyterLab writes when it opens a notebook and starts this project's kernel: the
    installed ``python3`` kernelspec and the kernel's ``language_info``. Committed notebooks carry exactly this,
    so opening one does not mark it modified."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    info = dict(IPythonKernel.language_info)
    order = ("codemirror_mode", "file_extension", "mimetype", "name", "nbconvert_exporter", "pygments_lexer", "version")
    return {
        "kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": "python3"},
        "language_info": {k: info[k] for k in order},
    }


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_for_commit(nb: dict) -> dict:
    """An executed notebook without run-specific noise: no papermill / execution metadata, no
    injected-parameters cell, no progress bars (stderr streams, and the widget views tqdm shows when ipywidgets is
    installed: their state is not saved, so JupyterLab would show "Error displaying widget" for each); outputs
    otherwise kept."""
    nb = json.loads(json.dumps(nb))
    nb["metadata"] = kernel_metadata()  # what the kernel writes on open: committed notebooks stay clean
    cells = []
    for cell in nb["cells"]:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        for key in ("papermill", "execution"):
            cell.get("metadata", {}).pop(key, None)
        if cell["cell_type"] == "code":
            cell["outputs"] = [
                o
                for o in cell.get("outputs", [])
                if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
                and WIDGET_VIEW not in o.get("data", {})
            ]
        cells.append(cell)
    nb["cells"] = cells
    return nb


def write_back(executed: Path, target: Path) -> None:
    """Store a stripped executed notebook over its source, atomically."""
    nb = strip_for_commit(json.loads(executed.read_text(encoding="utf-8")))
    with atomic_path(target) as tmp:
        Path(tmp).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


VOLATILE = re.compile(
    r"(^time/|^memory/|_s$|_ms$|seconds|peak_rss|wall|elapsed|timestamp|created|fetched|_mb$"
    r"|from_cache|^reused$)"
)
"""Field names whose values are timings, memory readings or cache provenance (a first run computes
what a second one finds cached): left out when two runs are compared."""


def _stable(obj):
    if isinstance(obj, dict):
        return {
            k: sorted(v) if k == "target_modules" and isinstance(v, list) else _stable(v)  # peft saves a set
            for k, v in obj.items()
            if not VOLATILE.search(str(k))
        }
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _comparable(path: Path, root: Path):
    """A file's content with timing / memory fields removed and the run's own folder written as
    ``<root>`` (JSON, JSONL, CSV), else its bytes."""
    import csv
    import io

    if path.suffix not in (".json", ".jsonl", ".csv"):
        return path.read_bytes()
    text = path.read_text(encoding="utf-8").replace(str(root), "<root>")
    if path.suffix == ".json":
        return _stable(json.loads(text))
    if path.suffix == ".jsonl":
        return [_stable(json.loads(line)) for line in text.splitlines() if line.strip()]
    return [_stable(row) for row in csv.DictReader(io.StringIO(text, newline=""))]


def compare_runs(a: Path | str, b: Path | str, skip: tuple[str, ...] = ("notebooks",)) -> list[str]:
    """Differences between two run folders (same file set, same content up to timings / memory);
    an empty list means the second run reproduced the first. ``skip``: top-level folders left out
    (executed notebooks carry wall times)."""
    a, b = Path(a), Path(b)

    def files(root: Path) -> set[str]:
        return {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in skip
        }

    fa, fb = files(a), files(b)
    out = [f"only in {a}: {f}" for f in sorted(fa - fb)] + [f"only in {b}: {f}" for f in sorted(fb - fa)]
    out += [f"differs: {f}" for f in sorted(fa & fb) if _comparable(a / f, a.parent) != _comparable(b / f, b.parent)]
    return out


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Run the numbered notebooks in order (papermill).",
        epilog="example: stepsearch reproduce --profile smoke --only 01 02",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    ap.add_argument("--only", nargs="*", help="notebook name prefixes to run (default: all)")
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="compare two run folders (e.g. runs/smoke and another artifact root's smoke) instead of running: "
        "the same files with the same content up to timings, memory and location; exit 1 when they differ",
    )
    ap.add_argument(
        "--write-back",
        action="store_true",
        help="store the executed notebooks (stripped) back into notebooks/ (smoke or cpu profile)",
    )
    ap.add_argument("--full", action="store_true", help="cpu: the profile's own sizes instead of the quick local run")
    ap.add_argument(
        "--started-at",
        type=float,
        metavar="EPOCH_S",
        help="when the whole command started (Unix seconds; `make reproduce` passes the time before its install step): "
        "the last line also prints the total from then",
    )
    args = ap.parse_args(argv)
    if args.compare:
        for path in args.compare:
            if not Path(path).is_dir():
                raise UsageError(f"--compare: {path} is not a run folder")
        differences = compare_runs(*args.compare)
        print("\n".join(differences) or f"{args.compare[1]} reproduces {args.compare[0]}")
        return 1 if differences else 0
    if args.write_back and args.profile not in ("smoke", "cpu"):
        ap.error("--write-back is for the smoke and cpu profiles (the committed notebooks carry cpu outputs)")
    overrides = local_run_overrides(args.profile, parse_cli_overrides(args.set), args.full)
    if args.profile == "cpu" and not args.full:
        print(
            f"[reproduce] the local run uses the quick settings {QUICK} (--full: the profile's own); the study's "
            "figures in notebooks 04 and 05 read the committed results/cpu_study",
            flush=True,
        )
    cfg = get_config(args.profile, overrides, seed=args.seed or 0)
    notebooks = [p for p in notebook_paths() if not args.only or any(p.name.startswith(o) for o in args.only)]
    if not notebooks:
        raise SystemExit("no numbered notebooks found under notebooks/")
    out_dir = cfg.path("notebooks")
    total = 0.0
    for nb in notebooks:
        print(f"[reproduce] {nb.name} (profile {cfg.profile}) ...", flush=True)
        seconds = run_notebook(nb, out_dir, {"PROFILE": cfg.profile, "SEED": cfg.seed, "OVERRIDES": overrides})
        total += seconds
        print(f"[reproduce] {nb.name} done in {seconds:.0f} s", flush=True)
        if args.write_back:
            write_back(out_dir / nb.name, nb)
    print(total_line(len(notebooks), total, out_dir, args.started_at, time.time()), flush=True)
    return 0


def total_line(n: int, notebook_s: float, out_dir: Path, started_at: float | None, now: float) -> str:
    """The run's last line: the notebooks' summed wall time and, given when the whole command started (before
    `make reproduce` installs anything), the total from an empty machine that the 90-minute budget is about.

    >>> total_line(5, 3600, Path("runs/cpu/notebooks"), 1000.0, 1000.0 + 4500)
    '[reproduce] 5 notebooks in 60.0 min; total from the start of the command (install included) 75.0 min; executed copies in runs/cpu/notebooks'
    >>> total_line(1, 90, Path("x"), None, 0.0)
    '[reproduce] 1 notebooks in 1.5 min; executed copies in x'
    """
    since = (
        ""
        if started_at is None
        else f"; total from the start of the command (install included) {(now - started_at) / 60:.1f} min"
    )
    return f"[reproduce] {n} notebooks in {notebook_s / 60:.1f} min{since}; executed copies in {out_dir}"


if __name__ == "__main__":
    raise SystemExit(main())
