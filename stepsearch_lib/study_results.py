"""The cpu study's committed results: what each phase writes under ``results/cpu_study/`` and what reads it back.

`study` runs the phases (training, evaluation); this module holds the file side of them, so that a notebook or a
test reads the study without importing its runners: the arms and their run names, copying a run's metrics into the
results (`publish_metrics`), the tables made from published metrics (`pilot_report`, `movement_check`), the
figures (`study_figures`), and `committed_study` (what notebooks 04 and 05 show, with the command behind each
missing table). The numbers themselves come from `study_stats`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .fileio import atomic_path, read_csv, require, write_csv
from .paths import PROJECT_ROOT
from .plotting import plot_study_curves, plot_study_heldout
from .study_stats import choose_lr, movement_rows, pilot_summary
from .train import run_name

RESULTS = PROJECT_ROOT / "results" / "cpu_study"
"""Committed results of the cpu study (small files: CSV, metrics JSONL, predictions, figures)."""

ARMS = {"steppo": ("steppo", "full"), "ppo": ("ppo", "global_only"), "grpo": ("grpo", "full")}
"""arm -> (algorithm, reward configuration)."""
ARM_LABELS = {"steppo": "StePPO (step + global rewards)", "ppo": "PPO (global reward)", "grpo": "GRPO"}


def publish_metrics(path: Path, folder: Path) -> Path:
    """Copy a run's metrics JSONL into ``folder`` (atomic)."""
    target = folder / Path(path).name
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


def pilot_tag(lr: float) -> str:
    return f"pilot-lr{lr:g}"


PILOT_CURVE_KEYS = (
    ("reward/token_sum", "training reward (sum per episode)"),
    ("losses/kl_ref", "KL to the warm start"),
)
"""What the learning-rate choice reads (`choose_lr`), one panel each."""


def pilot_report(lrs, out: Path) -> Path:
    """``pilot/summary.csv`` (one row per rate, the chosen one marked, the reason) and ``figures/pilot_curves.png``
    from the pilot runs' published metrics."""
    runs = {
        lr: require(
            out / "pilot" / f"{run_name('steppo', 'full', 0, pilot_tag(lr))}.jsonl", "stepsearch study --phase pilot"
        )
        for lr in lrs
    }
    rows = pilot_summary(runs)
    chosen, why = choose_lr(rows)
    for r in rows:
        r["chosen"] = r["actor_lr"] == chosen
        r["why"] = why if r["chosen"] else ""
    plot_study_curves(
        {f"lr {lr:g}": [path] for lr, path in runs.items()},
        out / "figures" / "pilot_curves.png",
        keys=PILOT_CURVE_KEYS,
        title=f"Pilot: StePPO at {len(runs)} actor learning rates ({max(r['updates'] for r in rows)} updates, seed 0)",
    )
    return write_csv(out / "pilot" / "summary.csv", rows)


def movement_check(arms, seeds, out: Path) -> Path:
    """``movement.csv``: `movement_rows` of every arm whose runs of ``seeds`` have published metrics."""
    rows = []
    for arm in arms:
        algo, reward = ARMS[arm]
        runs = {
            s: require(
                out / "metrics" / f"{run_name(algo, reward, s, 'study')}.jsonl",
                f"stepsearch study --phase train --arms {arm} --seeds {s}",
            )
            for s in seeds
        }
        rows += movement_rows(runs, arm)
    return write_csv(out / "movement.csv", rows)


def study_figures(arms, seeds, out: Path) -> list[Path]:
    """Training curves (mean and seed band per arm) from the published metrics; held-out EM beside the paper."""
    curves = {}
    for arm in arms:
        algo, reward = ARMS[arm]
        paths = [out / "metrics" / f"{run_name(algo, reward, seed, 'study')}.jsonl" for seed in seeds]
        if all(p.is_file() for p in paths):
            curves[arm] = paths
    figures = []
    if curves:
        figures.append(
            plot_study_curves(
                curves,
                out / "figures" / "training_curves.png",
                title="cpu study: training curves (mean over seeds, min-max band)",
            )
        )
    if (out / "summary.csv").is_file():
        figures.append(
            plot_study_heldout(
                out / "summary.csv",
                PROJECT_ROOT / "reference" / "paper_results.csv",
                out / "figures" / "heldout_em.png",
            )
        )
    return figures


def committed_study(out: Path = RESULTS) -> dict:
    """What the committed study holds so far, for notebooks 04 and 05 (each table's rows, or None when that phase
    has not been committed yet): ``warm_starts``, ``pilot``, ``movement``, ``summary``; ``curves`` = {arm: the
    metrics JSONL of its seeds that have them}; ``missing`` = the command that produces each absent table."""
    tables = {
        "warm_starts": (out / "warm_starts.csv", "make study PHASE=warm"),
        "pilot": (out / "pilot" / "summary.csv", "make study PHASE=pilot"),
        "movement": (out / "movement.csv", "make study PHASE=summary"),
        "summary": (out / "summary.csv", "make study PHASE=eval && make study PHASE=summary"),
    }
    found = {name: read_csv(path) if path.is_file() else None for name, (path, _) in tables.items()}
    curves = {}
    for arm, (algo, reward) in ARMS.items():
        paths = sorted((out / "metrics").glob(f"{run_name(algo, reward, 0, 'study').replace('-s0-', '-s*-')}.jsonl"))
        if paths:
            curves[arm] = paths
    missing = {name: cmd for name, (_, cmd) in tables.items() if found[name] is None}
    return {**found, "curves": curves, "missing": missing}
