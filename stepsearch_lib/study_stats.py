"""The study's statistics over per-update metrics and summary rows (pure: files or rows in, numbers out): the
reward trend and its interval, the pilot's learning-rate choice, the movement check (did RL move the policy beyond
seed-to-seed noise?), the held-out summary with its paired differences (`summarize`), and the table the notebooks
show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from .evaluate import bootstrap_ci
from .fileio import atomic_path, iter_json_records, require, write_csv
from .heldout import METRICS, paired_bootstrap

PILOT_KL_MAX = 0.05
"""Largest per-token KL to the warm start (``losses/kl_ref``) a learning rate may reach in any of a pilot's last 5
updates: beyond it the policy leaves the protocol the warm start taught faster than the reward can say whether that
helps (the released recipe's KL coefficient 0.001 makes the penalty itself negligible at this size). Each of the
last 5, not their mean: in the cpu pilot, lr 1e-4 kept a last-5 mean of 0.045 while its last three updates were
0.056-0.078 and its policy had switched to one search per question (the redundancy penalty gone, the answer reward
falling) -- a mean hides such a change of regime (rule tightened after that pilot; both columns are reported)."""


def reward_trend(values) -> tuple[float, float, float]:
    r"""Least-squares slope of ``values`` per update and its 95 % interval (t quantile, n - 2 degrees of freedom):
    $\hat\beta = \sum_i (x_i - \bar x)(y_i - \bar y) / \sum_i (x_i - \bar x)^2$, $\mathrm{se} = \sqrt{\sum_i e_i^2 /
    ((n-2) \sum_i (x_i - \bar x)^2)}$.

    >>> [round(v, 3) for v in reward_trend([0.0, 1.0, 2.0, 3.0])]
    [1.0, 1.0, 1.0]
    """
    y = np.asarray(values, dtype=float)
    x = np.arange(len(y), dtype=float)
    if len(y) < 3:  # two points fit a line exactly: no residual left to estimate the slope's noise
        return float("nan"), float("nan"), float("nan")
    sxx = ((x - x.mean()) ** 2).sum()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    resid = y - (y.mean() + slope * (x - x.mean()))
    half = float(stats.t.ppf(0.975, len(y) - 2) * np.sqrt((resid**2).sum() / ((len(y) - 2) * sxx)))
    return slope, slope - half, slope + half


def pilot_summary(runs: dict[float, Path]) -> list[dict]:
    """Per pilot learning rate: updates run, the training reward's trend (slope per update, 95 % interval), its mean
    over the first and last 5 updates, the KL to the warm start over the last 5 updates (mean and largest) and at
    most, and what the reward is made of at the start and the end (mean of the first and last 5 updates): the
    global reward (``reward/final``) and the searches per question."""
    rows = []
    for lr, path in sorted(runs.items()):
        records = [r for _, r in iter_json_records(path)]
        # the reward the actor maximises: every token's reward (step rewards + the global one) summed per episode
        reward = [r["reward/token_sum"] for r in records]
        kl = [r["losses/kl_ref"] for r in records]
        slope, lo, hi = reward_trend(reward)

        # what the sum is made of at each end: a rising sum with a falling global reward is step-reward gaming
        def ends(key):
            values = [r.get(key, float("nan")) for r in records]
            return float(np.mean(values[:5])), float(np.mean(values[-5:]))

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
                "kl_last5_max": float(np.max(kl[-5:])),
                "kl_max": float(np.max(kl)),
                **dict(zip(("global_first5", "global_last5"), ends("reward/final"))),
                **dict(zip(("searches_first5", "searches_last5"), ends("rollout/num_searches"))),
            }
        )
    return rows


def choose_lr(rows: list[dict], kl_max: float = PILOT_KL_MAX) -> tuple[float, str]:
    """The study's actor learning rate from `pilot_summary` rows, and why: among the rates whose KL to the warm start
    stays within ``kl_max`` in each of the last 5 updates, the one whose training reward rises fastest; the smallest
    rate when none stays within.

    >>> choose_lr([{"actor_lr": 1e-5, "reward_slope": 0.01, "kl_last5_max": 0.01},
    ...            {"actor_lr": 1e-4, "reward_slope": 0.05, "kl_last5_max": 0.2}])[0]
    1e-05
    """
    # the KL bound first: a fast-rising reward far from the warm start may be a new regime, not learning
    within = [r for r in rows if r["kl_last5_max"] <= kl_max]
    if not within:
        smallest = min(rows, key=lambda r: r["actor_lr"])
        return smallest["actor_lr"], f"no rate kept the KL to the warm start within {kl_max}: the smallest"
    best = max(within, key=lambda r: r["reward_slope"])
    return best["actor_lr"], (
        f"steepest training-reward trend ({best['reward_slope']:+.4f} per update) among the rates whose KL to the "
        f"warm start stayed within {kl_max} in each of the last 5 updates"
    )


MOVEMENT_WINDOW = 10
"""Updates averaged at the end of a run for its KL to the warm start (and at its start and end for the reward)."""


def movement_rows(runs: dict[int, Path], arm: str) -> list[dict]:
    r"""Did RL move ``arm``'s policy (``runs``: seed -> metrics JSONL) beyond seed-to-seed noise?

    Per seed: the training reward's trend (`reward_trend`, 95 % interval over updates), its mean over the first and
    last `MOVEMENT_WINDOW` updates, the KL to the warm start over the last window (``kl_last``) and the KL
    estimator's *noise floor* ``kl_floor``: the largest $|\widehat{KL}|$ over the critic warm-up updates
    (``losses/actor_updated`` = 0), where the policy still is the warm start. Per arm (seed ``"mean"``): the mean
    over seeds with a t interval over seeds (n - 1 degrees of freedom): the seed-to-seed noise. The arm ``moved``
    when its KL interval lies above every seed's floor; its reward ``rose`` when the slope interval lies above 0
    (per seed: the seed's own KL and slope interval).
    """
    rows = []
    for seed, path in sorted(runs.items()):
        records = [r for _, r in iter_json_records(path)]
        reward = [r["reward/token_sum"] for r in records]
        kl = [r["losses/kl_ref"] for r in records]
        # before the actor's first step the policy *is* the reference: |KL| there is rounding and estimator noise
        frozen = [abs(r["losses/kl_ref"]) for r in records if not r.get("losses/actor_updated", 1.0)]
        slope, lo, hi = reward_trend(reward)
        w = MOVEMENT_WINDOW
        rows.append(
            {
                "arm": arm,
                "seed": seed,
                "updates": len(records),
                "reward_slope": slope,
                "slope_lo": lo,
                "slope_hi": hi,
                "reward_first": float(np.mean(reward[:w])),
                "reward_last": float(np.mean(reward[-w:])),
                "kl_last": float(np.mean(kl[-w:])),
                "kl_lo": float("nan"),
                "kl_hi": float("nan"),
                "kl_floor": max(frozen, default=float("nan")),
            }
        )
        rows[-1]["moved"] = bool(rows[-1]["kl_last"] > rows[-1]["kl_floor"])
        rows[-1]["rose"] = bool(lo > 0)

    def over_seeds(key):
        v = np.array([r[key] for r in rows], dtype=float)
        if len(v) < 2:
            return float(v.mean()), float("nan"), float("nan")
        half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
        return float(v.mean()), float(v.mean() - half), float(v.mean() + half)

    # the arm: a t interval over its seeds (each seed one number) must clear 0 (reward) and every seed's floor (KL)
    slope, slope_lo, slope_hi = over_seeds("reward_slope")
    kl, kl_lo, kl_hi = over_seeds("kl_last")
    floor = max((r["kl_floor"] for r in rows if r["kl_floor"] == r["kl_floor"]), default=0.0)
    rows.append(
        {
            "arm": arm,
            "seed": "mean",
            "updates": min(r["updates"] for r in rows),
            "reward_slope": slope,
            "slope_lo": slope_lo,
            "slope_hi": slope_hi,
            "reward_first": over_seeds("reward_first")[0],
            "reward_last": over_seeds("reward_last")[0],
            "kl_last": kl,
            "kl_lo": kl_lo,
            "kl_hi": kl_hi,
            "kl_floor": floor,
            "moved": bool(kl_lo > floor),
            "rose": bool(slope_lo > 0),
        }
    )
    return rows


def paired_table(summary_rows: list[dict], metrics=METRICS) -> list[dict]:
    """The paired differences of ``summary.csv`` (StePPO - PPO, each arm - warm start) as one row per (comparison,
    metric) and one ``"d [lo, hi] n=pairs"`` column per dataset.

    >>> paired_table([{"arm": "steppo - ppo", "seed": "paired", "dataset": "bamboogle", "metric": "em", "n": "375",
    ...                "value": "0.04", "lo": "-0.01", "hi": "0.09"}])
    [{'comparison': 'steppo - ppo', 'metric': 'em', 'bamboogle': '+0.040 [-0.010, +0.090] n=375'}]
    """
    table: dict[tuple[str, str], dict] = {}
    for r in summary_rows:
        if r["seed"] != "paired" or r["metric"] not in metrics:  # per-seed rows are the arms' levels, not differences
            continue
        row = table.setdefault((r["arm"], r["metric"]), {"comparison": r["arm"], "metric": r["metric"]})
        d, lo, hi = (float(r[k]) for k in ("value", "lo", "hi"))
        row[r["dataset"]] = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] n={r['n']}"
    order = {m: i for i, m in enumerate(metrics)}
    return sorted(table.values(), key=lambda row: (row["comparison"], order[row["metric"]]))


def markdown_tables(summary_rows: list[dict], metrics=METRICS) -> str:
    """``summary.csv`` as the README's markdown: each arm's level per dataset (mean over its seeds, the seeds'
    min..max when there are several) and every paired difference (`paired_table`), so that no number in the README
    is copied by hand.

    >>> rows = [{"arm": a, "seed": s, "dataset": "bamboogle", "metric": "em", "n": "125", "value": v, "lo": "0",
    ...          "hi": "1"} for a, s, v in [("warm", "-", "0.024"), ("ppo", "0", "0.02"), ("ppo", "1", "0.04")]]
    >>> print(markdown_tables(rows, metrics=("em",)))
    | arm | metric | bamboogle |
    |---|---|---|
    | warm | em | 0.024 |
    | ppo | em | 0.030 (0.020..0.040, 2 seeds) |
    <BLANKLINE>
    """
    levels: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in summary_rows:
        if r["seed"] != "paired" and r["metric"] in metrics:  # per-seed rows: the arms' levels
            levels.setdefault((r["arm"], r["metric"]), {}).setdefault(r["dataset"], []).append(float(r["value"]))
    datasets = list(dict.fromkeys(r["dataset"] for r in summary_rows))

    def cell(values):
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{np.mean(values):.3f} ({min(values):.3f}..{max(values):.3f}, {len(values)} seeds)"

    def table(header, rows):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"

    arms = list(dict.fromkeys(arm for arm, _ in levels))
    order = {m: i for i, m in enumerate(metrics)}
    keys = sorted(levels, key=lambda k: (arms.index(k[0]), order[k[1]]))
    text = table(
        ["arm", "metric", *datasets],
        [[a, m] + [cell(levels[a, m][d]) if d in levels[a, m] else "-" for d in datasets] for a, m in keys],
    )
    paired = paired_table(summary_rows, metrics)
    if paired:
        text += "\n" + table(
            ["comparison", "metric", *datasets],
            [[p["comparison"], p["metric"]] + [p.get(d, "-") for d in datasets] for p in paired],
        )
    return text


def summarize(arms, seeds, out: Path, n_samples: int = 2000) -> Path:
    """``summary.csv`` from the committed predictions: per (arm, seed, dataset, metric) value and interval; paired
    differences (StePPO - PPO, arm - warm start) over seeds and questions; ``summary.md``: the same rows as markdown
    tables (`markdown_tables`)."""

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
    summary = write_csv(out / "summary.csv", rows)
    with atomic_path(out / "summary.md") as tmp:  # the README's tables, rendered from the same rows
        Path(tmp).write_text(markdown_tables(rows))
    return summary
