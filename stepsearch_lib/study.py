"""``stepsearch study``: the cpu study -- StePPO vs global-reward PPO from one warm start, paired seeds.

Phases, each resumable and each runnable for any subset (``--arms``, ``--seeds``, ``--lrs``):

* ``warm``  both warm starts -- demonstrations searching with gold sub-question queries (``gold``) and with the
  question's own words (``question``) -- trained from seed 0 and checked on the same dev questions (format rate,
  search rate, searches, search-key score, F1) -> ``results/cpu_study/warm_starts.csv``. The study starts from
  ``train.sft_queries`` (``question``: query quality has room to grow, which is what step rewards teach).
* ``pilot`` StePPO at each actor learning rate of ``--lrs`` for ``PILOT_STEPS`` updates from the study's warm start
  -> ``results/cpu_study/pilot/<run>.jsonl``, then ``pilot/summary.csv`` (reward trend with its interval, KL to the
  warm start, the chosen rate and why: `choose_lr`) and ``figures/pilot_curves.png``. The choice becomes
  ``ppo.actor_lr`` in `STUDY`.
* ``eval``  the warm start and every run's final checkpoint, greedy, on the held-out questions (`heldout`)
  -> ``results/cpu_study/predictions/<model>.jsonl`` (skipped when present: resumable).
* ``summary`` ``results/cpu_study/movement.csv`` (did RL move each arm beyond seed noise: `movement_rows`) and
  ``summary.csv``: per arm, seed, dataset and metric the mean with its 95 % bootstrap interval over questions;
  StePPO - PPO and each arm - warm start paired over seeds and questions; the figures.
* ``publish`` the metrics of every study and pilot run so far, finished or not, into the results (`publish_progress`):
  what a session commits before it ends.
* ``train`` every arm x seed for ``train.steps`` updates of ``train.questions_per_step`` questions (``STUDY``), the
  same warm start for all, seeds paired across arms (the same seed draws the same questions at every step)
  -> ``results/cpu_study/metrics/<run>.jsonl`` after every piece (``--stop-after K`` runs up to update K) and the
  run's resolved config ``results/cpu_study/config/<run>.json``.

``--jobs N`` runs N runs (pilot rates, arm x seed runs, or evaluated (model, dataset) parts) at once as separate processes on
cores / N threads each (`run_jobs`). Run folders live under ``runs/<profile>/checkpoints/<algo>-<reward>-s<seed>-study``
(pilot: ``-pilot-lr<lr>``). What each phase writes, and what reads it back (notebooks 04 and 05), is in
`study_results`; the statistics are in `study_stats`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from .checkpoint import latest_checkpoint
from .cli import add_config_args, door
from .config import get_config, to_dict
from .evaluate import load_model_for_eval
from .fileio import (
    MissingInputError,
    atomic_path,
    iter_json_records,
    require,
    write_csv,
    write_jsonl,
)
from .heldout import evaluate_heldout, heldout_sets
from .jobs import run_jobs
from .overrides import apply_overrides, parse_cli_overrides
from .profile_data import load_profile_corpus
from .retrieval import profile_retriever
from .sft import ensure_warm_start, warm_start_dir
from .study_inputs import publish_inputs, restore_inputs
from .study_results import (
    ARMS,
    RESULTS,
    movement_check,
    pilot_report,
    pilot_tag,
    publish_metrics,
    study_figures,
)
from .study_stats import summarize
from .train import run_name, train


def results_dir(profile: str, overrides: dict | None = None) -> Path:
    """`RESULTS` for the cpu profile in the project's own run folder; ``<run folder>/study`` otherwise (a smoke
    study, or one under another artifact root, never writes over the committed results)."""
    if profile == "cpu" and not (overrides or {}).get("artifact_root"):
        return RESULTS
    return get_config(profile, overrides).run_dir / "study"


STUDY = {
    "train.steps": 60,  # x 8 questions = 480 training episodes per run
    "train.questions_per_step": 8,
    "train.sft_queries": "question",  # the warm start with headroom (see the `warm` phase)
    "train.save_every": 5,
    "ppo.actor_lr": 5e-5,  # the pilot's choice (results/cpu_study/pilot/summary.csv: `study_stats.choose_lr`)
    "reward.fidelity": "released",
}
"""The study's settings over the profile (the caller's ``--set`` wins)."""

WARM_SEED = 0
"""Every run starts from the warm start trained with this seed: arms differ only in what RL does."""

PILOT_STEPS = 15
PILOT_LRS = (2e-5, 5e-5, 1e-4)
HELDOUT_PER_DATASET = 100
"""Held-out questions per dev subset (all 125 of Bamboogle)."""


def study_config(profile: str, overrides: dict | None = None, seed: int = 0):
    return get_config(profile, {**STUDY, **(overrides or {})}, seed=seed)


def warm_start_adapter(profile: str, overrides: dict | None = None) -> Path:
    """The study's warm start: restored from the committed inputs (`restore_inputs`), else trained now unless a saved
    one with the same settings exists; a newly trained one is committed to the inputs (`publish_inputs`)."""
    cfg = study_config(profile, overrides, WARM_SEED)
    inputs = results_dir(profile, overrides) / "inputs"
    restore_inputs(cfg, inputs)
    ensure_warm_start(cfg)
    publish_inputs(cfg, inputs)
    return warm_start_dir(cfg)


def compare_warm_starts(profile: str, out: Path, overrides: dict | None = None) -> Path:
    """Train (or reuse) both warm starts and write their dev-question rates side by side."""
    study_cfg = study_config(profile, overrides, WARM_SEED)
    restore_inputs(study_cfg, out / "inputs")
    rows = []
    for queries in ("gold", "question"):
        cfg = study_config(profile, {**(overrides or {}), "train.sft_queries": queries}, WARM_SEED)
        report = ensure_warm_start(cfg)
        for when in ("before", "after"):
            r = report[when]
            rows.append(
                {
                    "warm_start": queries,
                    "when": when,
                    "questions": r["questions"],
                    "format_ok": r["format_ok"],
                    "searched": r["searched"],
                    "searches_per_question": r["searches_per_question"],
                    "search_key": r.get("search_key", float("nan")),
                    "answer_f1": r["answer_f1"],
                    "train_s": report["train_s"],
                    "adapter": Path(report["adapter"]).name,
                }
            )
    publish_inputs(study_cfg, out / "inputs")
    return write_csv(out / "warm_starts.csv", rows)


def from_warm_start(cfg, profile: str, overrides: dict | None = None):
    """``cfg`` starting RL from the study's one warm start (whatever ``cfg``'s seed)."""
    return replace(cfg, train=replace(cfg.train, init_adapter=str(warm_start_adapter(profile, overrides))))


def publish_config(cfg, algo: str, reward: str, tag: str, folder: Path) -> Path:
    """The run's resolved config (every section, the algorithm and reward it trains with; the warm start relative to
    the run folder) as ``folder/<run>.json``: what a reader needs to rerun it."""
    cfg = apply_overrides(cfg, {"train.algo": algo, "reward.name": reward})
    resolved = to_dict(cfg)
    resolved["train"]["init_adapter"] = os.path.relpath(cfg.train.init_adapter, cfg.run_dir)
    target = folder / f"{run_name(algo, reward, cfg.seed, tag)}.json"
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(resolved, indent=1) + "\n", encoding="utf-8")
    return target


def run_arm(
    profile: str, arm: str, seed: int, out: Path, overrides: dict | None = None, stop_after: int | None = None
) -> Path:
    algo, reward = ARMS[arm]
    cfg = from_warm_start(study_config(profile, overrides, seed), profile, overrides)
    publish_config(cfg, algo, reward, "study", out / "config")
    return publish_metrics(train(cfg, algo, reward, tag="study", stop_after=stop_after), out / "metrics")


def run_pilot(profile: str, lr: float, out: Path, overrides: dict | None = None) -> Path:
    cfg = from_warm_start(study_config(profile, {**(overrides or {}), "ppo.actor_lr": lr}, 0), profile, overrides)
    cfg = apply_overrides(cfg, {"train.steps": PILOT_STEPS})
    publish_config(cfg, "steppo", "full", pilot_tag(lr), out / "config")
    return publish_metrics(train(cfg, "steppo", "full", tag=pilot_tag(lr)), out / "pilot")


def publish_progress(
    profile: str, arms, seeds, lrs, out: Path, overrides: dict | None = None
) -> list[tuple[Path, int]]:
    """Copy the metrics of every study run (``arms`` x ``seeds``) and pilot run (``lrs``) that has any into the
    results (``metrics/``, ``pilot/``), finished or not, with the number of updates each holds: what a session
    commits before it ends, so that the curves so far survive a fresh machine. A run resumed later recomputes its
    lines after its last checkpoint (the same values: per-update randomness comes from (seed, update)) and
    publishes again."""
    folder = get_config(profile, overrides).path("metrics")
    runs = [(run_name(*ARMS[arm], seed, "study"), "metrics") for seed in seeds for arm in arms]
    runs += [(run_name("steppo", "full", 0, pilot_tag(lr)), "pilot") for lr in lrs]
    published = []
    for name, kind in runs:
        if (folder / f"{name}.jsonl").is_file():
            target = publish_metrics(folder / f"{name}.jsonl", out / kind)
            published.append((target, sum(1 for _ in iter_json_records(target))))
    return published


def study_models(profile: str, arms, seeds, overrides: dict | None = None) -> dict[str, Path]:
    """{name: adapter or final checkpoint} of the warm start and every study run of ``arms`` x ``seeds``; a run that
    has not finished its ``train.steps`` updates is an error naming the command that finishes it."""
    runs = {}
    for seed in seeds:
        cfg = study_config(profile, overrides, seed)
        for arm in arms:
            algo, reward = ARMS[arm]
            folder = cfg.path("checkpoints", run_name(algo, reward, seed, "study"))
            cmd = f"stepsearch study --phase train --arms {arm} --seeds {seed}"
            require(folder / "latest", cmd)
            step = latest_checkpoint(folder)
            done = json.loads((step / "state.json").read_text())["step"]
            if done < cfg.train.steps:
                raise MissingInputError(f"{folder} has {done} of {cfg.train.steps} updates: {cmd}")
            runs[f"{arm}-s{seed}"] = step
    return {"warm": warm_start_adapter(profile, overrides), **runs}


def run_heldout(
    profile: str,
    arms,
    seeds,
    out: Path,
    overrides: dict | None = None,
    only: str | None = None,
    datasets=None,
) -> list[Path]:
    """Predictions of each study model (``only``: that one) on the held-out questions -> ``predictions/<name>.jsonl``
    (a model with predictions is skipped). Resumable per dataset: finished datasets wait in the run folder's
    ``eval/study/<name>-<checkpoint>/`` until the model's last one is done. ``datasets``: evaluate only those (a
    ``--jobs`` worker's share); the predictions file is written once every dataset's part exists."""
    cfg = study_config(profile, overrides, 0)
    sets = heldout_sets(cfg, HELDOUT_PER_DATASET)
    retriever = corpus = None  # loaded once, only if some part is still to evaluate
    written = []
    for name, path in study_models(profile, arms, seeds, overrides).items():
        target = out / "predictions" / f"{name}.jsonl"
        if (only and name != only) or target.is_file():
            written += [target] if target.is_file() else []
            continue
        parts = {d: cfg.path("eval", "study", f"{name}-{Path(path).name}", f"{d}.jsonl") for d in sets}
        todo = [d for d, part in parts.items() if not part.is_file() and (not datasets or d in datasets)]
        if todo:
            if retriever is None:
                retriever, corpus = profile_retriever(cfg), load_profile_corpus(cfg)
            model, tok = load_model_for_eval(str(path), cfg)
            for d in todo:
                write_jsonl(parts[d], evaluate_heldout(model, tok, {d: sets[d]}, retriever, cfg, corpus))
        if all(part.is_file() for part in parts.values()):
            written.append(write_jsonl(target, [r for part in parts.values() for _, r in iter_json_records(part)]))
    return written


def study_jobs(args, jobs: int) -> list[tuple[str, list[str]]]:
    """(label, argv) of the worker processes a ``--jobs`` run starts: one per pilot rate, per seed x arm of the
    train phase (seed-major: a partial study has both arms of its first seeds), or per model and dataset to evaluate."""
    common = [sys.executable, "-m", "stepsearch_lib", "study", "--profile", args.profile, "--worker"]
    common += [x for s in args.set for x in ("--set", s)]
    if args.phase == "pilot":
        return [(pilot_tag(lr), [*common, "--phase", "pilot", "--lrs", repr(lr)]) for lr in args.lrs]
    if args.phase == "eval":
        names = ["warm"] + [f"{arm}-s{seed}" for seed in args.seeds for arm in args.arms]
        models = ["--arms", *args.arms, "--seeds", *map(str, args.seeds)]
        datasets = [d for d, _ in get_config(args.profile, parse_cli_overrides(args.set)).data.eval_files]
        return [  # one worker per (model, dataset): the last model's datasets still fill both cores
            (f"eval-{name}-{d}", [*common, "--phase", "eval", *models, "--only", name, "--datasets", d])
            for name in names
            for d in datasets
        ]
    stop = ["--stop-after", str(args.stop_after)] if args.stop_after is not None else []
    return [
        (f"{arm}-s{seed}", [*common, "--phase", "train", "--arms", arm, "--seeds", str(seed), *stop])
        for seed in args.seeds
        for arm in args.arms
    ]


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="The cpu study: StePPO vs PPO from one warm start, paired seeds (phases warm, pilot, train, eval, summary, "
        "publish).",
        epilog="examples:\n  stepsearch study --phase warm\n  stepsearch study --phase pilot --lrs 5e-5\n"
        "  stepsearch study --phase train --arms steppo --seeds 0 --stop-after 20   (make study ARMS=steppo SEEDS=0)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    ap.add_argument("--phase", choices=("warm", "pilot", "train", "eval", "summary", "publish"), required=True)
    ap.add_argument(
        "--arms", nargs="*", choices=list(ARMS), default=["steppo", "ppo"], help="none: the warm start only (eval)"
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--lrs", nargs="+", type=float, default=list(PILOT_LRS), help="pilot actor learning rates")
    ap.add_argument("--stop-after", type=int, default=None, metavar="K", help="train: stop each run after update K")
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="pilot, train, eval: N runs (eval: model x dataset parts) at once, each on cores / N threads",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one run of a --jobs parent
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # eval worker: this model only
    ap.add_argument("--datasets", nargs="+", default=None, help=argparse.SUPPRESS)  # eval worker: these sets only
    args = ap.parse_args(argv)
    if args.seed is not None:
        ap.error("the study runs several seeds: use --seeds S [S ...]")
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    overrides = parse_cli_overrides(args.set)
    out = results_dir(args.profile, overrides)
    if args.jobs > 1 and args.phase in ("pilot", "train", "eval"):
        if args.phase == "eval":  # every model must be final before any worker starts
            study_models(args.profile, args.arms, args.seeds, overrides)
        run_jobs(study_jobs(args, args.jobs), args.jobs, get_config(args.profile, overrides).path("logs"))
        if args.phase == "pilot":
            print(f"pilot summary: {pilot_report(args.lrs, out)}")
        elif args.phase == "eval":
            for path in run_heldout(args.profile, args.arms, args.seeds, out, overrides):
                print(f"predictions: {path}")
        return 0
    if args.phase == "warm":
        print(f"warm starts: {compare_warm_starts(args.profile, out, overrides)}")
    elif args.phase == "pilot":
        for lr in args.lrs:
            print(f"pilot lr {lr:g}: {run_pilot(args.profile, lr, out, overrides)}", flush=True)
        if not args.worker:  # a --jobs parent reports once every rate has run
            print(f"pilot summary: {pilot_report(args.lrs, out)}")
    elif args.phase == "eval":
        for path in run_heldout(
            args.profile, args.arms, args.seeds, out, overrides, only=args.only, datasets=args.datasets
        ):
            print(f"predictions: {path}")
    elif args.phase == "publish":
        for path, updates in publish_progress(args.profile, args.arms, args.seeds, args.lrs, out, overrides):
            print(f"published {path} ({updates} updates)")
    elif args.phase == "summary":
        print(f"movement: {movement_check(args.arms, args.seeds, out)}")
        print(f"summary: {summarize(args.arms, args.seeds, out)}")
        for figure in study_figures(args.arms, args.seeds, out):
            print(f"figure: {figure}")
    else:
        for seed in args.seeds:  # seed-major: a partial study still has both arms of its first seeds
            for arm in args.arms:
                print(
                    f"{arm} seed {seed}: {run_arm(args.profile, arm, seed, out, overrides, args.stop_after)}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
