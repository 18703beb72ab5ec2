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
* ``summary`` ``results/cpu_study/summary.csv``: per arm, seed, dataset and metric the mean with its 95 % bootstrap
  interval over questions; StePPO - PPO and each arm - warm start paired over seeds and questions.
* ``train`` every arm x seed for ``train.steps`` updates of ``train.questions_per_step`` questions (``STUDY``), the
  same warm start for all, seeds paired across arms (the same seed draws the same questions at every step)
  -> ``results/cpu_study/metrics/<run>.jsonl`` after every piece (``--stop-after K`` runs up to update K).

Run folders live under ``runs/<profile>/checkpoints/<algo>-<reward>-s<seed>-study`` (pilot: ``-pilot-lr<lr>``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from .cli import add_config_args, door
from .config import get_config
from .evaluate import bootstrap_ci, load_model_for_eval
from .fileio import atomic_path, iter_json_records, require, write_csv, write_jsonl
from .heldout import METRICS, evaluate_heldout, heldout_sets, paired_bootstrap
from .overrides import parse_cli_overrides
from .paths import PROJECT_ROOT
from .plotting import plot_study_curves, plot_study_heldout
from .profile_data import load_profile_corpus
from .retrieval import profile_retriever
from .sft import ensure_warm_start
from .train import run_name, train

RESULTS = PROJECT_ROOT / "results" / "cpu_study"
"""Committed results of the cpu study (small files: CSV, metrics JSONL, predictions, figures)."""


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
    "reward.fidelity": "released",
}
"""The study's settings over the profile (the caller's ``--set`` wins)."""

ARMS = {"steppo": ("steppo", "full"), "ppo": ("ppo", "global_only"), "grpo": ("grpo", "full")}
"""arm -> (algorithm, reward configuration)."""

WARM_SEED = 0
"""Every run starts from the warm start trained with this seed: arms differ only in what RL does."""

PILOT_STEPS = 15
PILOT_LRS = (2e-5, 5e-5, 1e-4)
PILOT_KL_MAX = 0.05
"""Largest mean per-token KL to the warm start (``losses/kl_ref`` over a pilot's last 5 updates) a learning rate may
reach: beyond it the policy leaves the protocol the warm start taught faster than the reward can say whether that
helps (the released recipe's KL coefficient 0.001 makes the penalty itself negligible at this size)."""
HELDOUT_PER_DATASET = 100
"""Held-out questions per dev subset (all 125 of Bamboogle)."""


def study_config(profile: str, overrides: dict | None = None, seed: int = 0):
    return get_config(profile, {**STUDY, **(overrides or {})}, seed=seed)


def warm_start_adapter(profile: str, overrides: dict | None = None) -> Path:
    """The study's warm start (trained now unless a saved one with the same settings exists)."""
    return Path(ensure_warm_start(study_config(profile, overrides, WARM_SEED))["adapter"])


def compare_warm_starts(profile: str, out: Path, overrides: dict | None = None) -> Path:
    """Train (or reuse) both warm starts and write their dev-question rates side by side."""
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
    return write_csv(out / "warm_starts.csv", rows)


def from_warm_start(cfg, profile: str, overrides: dict | None = None):
    """``cfg`` starting RL from the study's one warm start (whatever ``cfg``'s seed)."""
    return replace(cfg, train=replace(cfg.train, init_adapter=str(warm_start_adapter(profile, overrides))))


def publish_metrics(path: Path, folder: Path) -> Path:
    """Copy a run's metrics JSONL into ``folder`` (atomic)."""
    target = folder / Path(path).name
    with atomic_path(target) as tmp:
        shutil.copyfile(path, tmp)
    return target


def run_arm(
    profile: str, arm: str, seed: int, out: Path, overrides: dict | None = None, stop_after: int | None = None
) -> Path:
    algo, reward = ARMS[arm]
    cfg = from_warm_start(study_config(profile, overrides, seed), profile, overrides)
    return publish_metrics(train(cfg, algo, reward, tag="study", stop_after=stop_after), out / "metrics")


def run_pilot(profile: str, lr: float, out: Path, overrides: dict | None = None) -> Path:
    cfg = from_warm_start(study_config(profile, {**(overrides or {}), "ppo.actor_lr": lr}, 0), profile, overrides)
    return publish_metrics(train(cfg, "steppo", "full", steps=PILOT_STEPS, tag=pilot_tag(lr)), out / "pilot")


def pilot_tag(lr: float) -> str:
    return f"pilot-lr{lr:g}"


PILOT_CURVE_KEYS = (
    ("reward/token_sum", "training reward (sum per episode)"),
    ("losses/kl_ref", "KL to the warm start"),
)
"""What the learning-rate choice reads (`choose_lr`), one panel each."""


def reward_trend(values) -> tuple[float, float, float]:
    r"""Least-squares slope of ``values`` per update and its 95 % interval (t quantile, n - 2 degrees of freedom):
    $\hat\beta = \sum_i (x_i - \bar x)(y_i - \bar y) / \sum_i (x_i - \bar x)^2$, $\mathrm{se} = \sqrt{\sum_i e_i^2 /
    ((n-2) \sum_i (x_i - \bar x)^2)}$.

    >>> [round(v, 3) for v in reward_trend([0.0, 1.0, 2.0, 3.0])]
    [1.0, 1.0, 1.0]
    """
    y = np.asarray(values, dtype=float)
    x = np.arange(len(y), dtype=float)
    if len(y) < 3:
        return float("nan"), float("nan"), float("nan")
    sxx = ((x - x.mean()) ** 2).sum()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + slope * (x - x.mean()))
    half = float(stats.t.ppf(0.975, len(y) - 2) * np.sqrt((resid**2).sum() / ((len(y) - 2) * sxx)))
    return slope, slope - half, slope + half


def pilot_summary(runs: dict[float, Path]) -> list[dict]:
    """Per pilot learning rate: updates run, the training reward's trend (slope per update, 95 % interval), its mean
    over the first and last 5 updates, and the KL to the warm start over the last 5 updates (mean) and at most."""
    rows = []
    for lr, path in sorted(runs.items()):
        records = [r for _, r in iter_json_records(path)]
        reward = [r["reward/token_sum"] for r in records]
        kl = [r["losses/kl_ref"] for r in records]
        slope, lo, hi = reward_trend(reward)
        rows.append(
            {
                "actor_lr": lr,
                "updates": len(records),
                "reward_slope": slope,
                "slope_lo": lo,
                "slope_hi": hi,
                "reward_first5": float(np.mean(reward[:5])),
                "reward_last5": float(np.mean(reward[-5:])),
                "kl_last5": float(np.mean(kl[-5:])),
                "kl_max": float(np.max(kl)),
            }
        )
    return rows


def choose_lr(rows: list[dict], kl_max: float = PILOT_KL_MAX) -> tuple[float, str]:
    """The study's actor learning rate from `pilot_summary` rows, and why: among the rates whose KL to the warm start
    stays within ``kl_max``, the one whose training reward rises fastest; the smallest rate when none stays within.

    >>> choose_lr([{"actor_lr": 1e-5, "reward_slope": 0.01, "kl_last5": 0.01},
    ...            {"actor_lr": 1e-4, "reward_slope": 0.05, "kl_last5": 0.2}])[0]
    1e-05
    """
    within = [r for r in rows if r["kl_last5"] <= kl_max]
    if not within:
        smallest = min(rows, key=lambda r: r["actor_lr"])
        return smallest["actor_lr"], f"no rate kept the KL to the warm start within {kl_max}: the smallest"
    best = max(within, key=lambda r: r["reward_slope"])
    return best["actor_lr"], (
        f"steepest training-reward trend ({best['reward_slope']:+.4f} per update) among the rates whose KL to the "
        f"warm start stayed within {kl_max} over the last 5 updates"
    )


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
        title=f"Pilot: StePPO at three actor learning rates ({PILOT_STEPS} updates, seed 0)",
    )
    return write_csv(out / "pilot" / "summary.csv", rows)


def study_models(profile: str, arms, seeds, overrides: dict | None = None) -> dict[str, Path]:
    """{name: adapter or checkpoint folder} of the warm start and every finished study run of ``arms`` x ``seeds``."""
    out = {"warm": warm_start_adapter(profile, overrides)}
    for seed in seeds:
        cfg = study_config(profile, overrides, seed)
        for arm in arms:
            algo, reward = ARMS[arm]
            folder = cfg.path("checkpoints", run_name(algo, reward, seed, "study"))
            cmd = f"stepsearch study --phase train --arms {arm} --seeds {seed}"
            out[f"{arm}-s{seed}"] = require(folder / "latest", cmd).parent
    return out


def run_heldout(profile: str, arms, seeds, out: Path, overrides: dict | None = None) -> list[Path]:
    """Predictions of each study model on the held-out questions (a model with predictions is skipped)."""
    cfg = study_config(profile, overrides, 0)
    sets = heldout_sets(cfg, HELDOUT_PER_DATASET)
    retriever, corpus = profile_retriever(cfg), load_profile_corpus(cfg)
    written = []
    for name, path in study_models(profile, arms, seeds, overrides).items():
        target = out / "predictions" / f"{name}.jsonl"
        if not target.is_file():
            model, tok = load_model_for_eval(str(path), cfg)
            write_jsonl(target, evaluate_heldout(model, tok, sets, retriever, cfg, corpus))
        written.append(target)
    return written


def summarize(arms, seeds, out: Path, n_samples: int = 2000) -> Path:
    """``summary.csv`` from the committed predictions: per (arm, seed, dataset, metric) value and interval; paired
    differences (StePPO - PPO, arm - warm start) over seeds and questions."""

    def load(name):
        path = require(out / "predictions" / f"{name}.jsonl", "stepsearch study --phase eval")
        return [r for _, r in iter_json_records(path)]

    warm = load("warm")
    # arm -> seed -> predictions; the warm start stands in for every seed when an arm is paired with it
    preds = {"warm": dict.fromkeys(seeds, warm), **{arm: {s: load(f"{arm}-s{s}") for s in seeds} for arm in arms}}
    datasets = sorted({r["dataset"] for r in warm})

    def row(arm, seed, ds, metric, n, value, lo, hi):
        return {"arm": arm, "seed": seed, "dataset": ds, "n": n, "metric": metric, "value": value, "lo": lo, "hi": hi}

    def keyed(arm, ds, metric):
        return {(s, r["id"]): r[metric] for s, rs in preds[arm].items() for r in rs if r["dataset"] == ds}

    rows = []
    for arm, seed, rs in [("warm", "-", warm)] + [(a, s, preds[a][s]) for a in arms for s in seeds]:
        for ds in datasets:
            for metric in METRICS:
                values = [r[metric] for r in rs if r["dataset"] == ds and r[metric] == r[metric]]  # NaN: no gold
                if values:
                    rows.append(row(arm, seed, ds, metric, len(values), *bootstrap_ci(values, n_samples)))
    pairs = [(a, "warm") for a in arms] + ([("steppo", "ppo")] if {"steppo", "ppo"} <= set(arms) else [])
    for left, right in pairs:
        for ds in datasets:
            for metric in METRICS:
                d, lo, hi, n = paired_bootstrap(keyed(left, ds, metric), keyed(right, ds, metric), n_samples)
                if n:
                    rows.append(row(f"{left} - {right}", "paired", ds, metric, n, d, lo, hi))
    return write_csv(out / "summary.csv", rows)


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


@door
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="The cpu study: StePPO vs PPO from one warm start, paired seeds (phases warm, pilot, train, eval, summary).",
        epilog="examples:\n  stepsearch study --phase warm\n  stepsearch study --phase pilot --lrs 5e-5\n"
        "  stepsearch study --phase train --arms steppo --seeds 0 --stop-after 20   (make study ARMS=steppo SEEDS=0)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(ap)
    ap.add_argument("--phase", choices=("warm", "pilot", "train", "eval", "summary"), required=True)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=["steppo", "ppo"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--lrs", nargs="+", type=float, default=list(PILOT_LRS), help="pilot actor learning rates")
    ap.add_argument("--stop-after", type=int, default=None, metavar="K", help="train: stop each run after update K")
    args = ap.parse_args(argv)
    if args.seed is not None:
        ap.error("the study runs several seeds: use --seeds S [S ...]")
    overrides = parse_cli_overrides(args.set)
    out = results_dir(args.profile, overrides)
    if args.phase == "warm":
        print(f"warm starts: {compare_warm_starts(args.profile, out, overrides)}")
    elif args.phase == "pilot":
        for lr in args.lrs:
            print(f"pilot lr {lr:g}: {run_pilot(args.profile, lr, out, overrides)}", flush=True)
        print(f"pilot summary: {pilot_report(args.lrs, out)}")
    elif args.phase == "eval":
        for path in run_heldout(args.profile, args.arms, args.seeds, out, overrides):
            print(f"predictions: {path}")
    elif args.phase == "summary":
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
