"""One function per figure. Each reads result files (CSV / JSONL) only and saves a PNG."""

from __future__ import annotations

import csv
from pathlib import Path

from .fileio import atomic_path, iter_json_records, read_csv


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, out_path: Path | str, title: str | None = None) -> Path:
    """Title, tight layout, atomic save, close."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format=out_path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return out_path


def plot_recall(csv_path: Path | str, out_path: Path | str, title: str = "Recall@k of gold paragraphs"):
    """Grouped lines: recall@k per retriever, one panel per dataset / MuSiQue hop."""
    plt = _pyplot()

    rows = read_csv(csv_path)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    retrievers = list(dict.fromkeys(r["retriever"] for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), sharey=True, squeeze=False)
    for ax, group in zip(axes[0], groups):
        for name in retrievers:
            pts = sorted(
                (int(r["k"]), float(r["recall"])) for r in rows if r["group"] == group and r["retriever"] == name
            )
            ax.plot([k for k, _ in pts], [v for _, v in pts], marker="o", label=name)
        n = next(r["n"] for r in rows if r["group"] == group)
        ax.set_title(f"{group} (n={n})", fontsize=9)
        ax.set_xlabel("k")
        ax.set_xscale("log")
        ax.set_xticks([1, 3, 5, 10], labels=["1", "3", "5", "10"])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("recall@k")
    axes[0][0].set_ylim(0, 1)
    axes[0][-1].legend(fontsize=8)
    return _finish(fig, out_path, title)


def plot_construction(
    counts_json: Path | str,
    queries_jsonl: Path | str,
    kept_jsonls: list[Path | str],
    out_path: Path | str,
    title: str = "StepSearch data construction",
):
    """Four panels: the funnel of counts per stage, kept ratio per writer and per retriever,
    queries kept per sub-question, and the hop-count distribution of kept questions."""
    import json
    from collections import Counter

    plt = _pyplot()

    counts = json.loads(Path(counts_json).read_text())
    queries = [row for _, row in iter_json_records(queries_jsonl)] if Path(queries_jsonl).stat().st_size else []
    kept = [row for p in kept_jsonls if Path(p).stat().st_size for _, row in iter_json_records(p)]
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.4))

    stages = ["questions_in", "questions_decomposed", "questions_kept"]
    ax[0].bar(["in", "decomposed", "kept"], [counts.get(s, 0) for s in stages], color=["#999", "#6a9fd4", "#2c7a3f"])
    ax[0].set_title("questions per stage", fontsize=9)

    writers = sorted({r["writer"] for r in queries})
    retr = sorted(k.split("/", 1)[1] for k in (queries[0] if queries else {}) if k.startswith("hit/"))
    labels = [f"writer: {w}" for w in writers] + [f"retriever: {r}" for r in retr]
    values = [
        sum(r["kept"] for r in queries if r["writer"] == w) / max(1, sum(r["writer"] == w for r in queries))
        for w in writers
    ] + [sum(r[f"hit/{n}"] for r in queries) / max(1, len(queries)) for n in retr]
    ax[1].barh(labels, values, color="#6a9fd4")
    ax[1].set_xlim(0, 1)
    ax[1].set_title("share of queries kept / hitting gold", fontsize=9)

    per_hop = Counter(len(q) for rec in kept for q in rec["sub_searchs"])
    ax[2].bar(list(per_hop), list(per_hop.values()), color="#d4a46a")
    ax[2].set_xlabel("surviving queries per sub-question")
    ax[2].set_title("queries per sub-question (kept data)", fontsize=9)

    hops = Counter(len(rec["sub_searchs"]) for rec in kept)
    ax[3].bar([str(h) for h in sorted(hops)], [hops[h] for h in sorted(hops)], color="#2c7a3f")
    ax[3].set_xlabel("hops")
    ax[3].set_title(f"hop count of kept questions (n={len(kept)})", fontsize=9)
    return _finish(fig, out_path, title)


def _grouped_bars(ax, groups: list[str], series: list[str], value: dict, labels: list[str]) -> None:
    """One bar per series inside each group; ``value[(group, series)]`` is the height."""
    import numpy as np

    width = 0.8 / len(series)
    x = np.arange(len(groups))
    for i, (name, label) in enumerate(zip(series, labels)):
        ax.bar(x + i * width, [value[(g, name)] for g in groups], width, label=label)
    ax.set_xticks(x + 0.4 - width / 2, groups, rotation=20, fontsize=8)


def plot_reward_separation(
    csv_path: Path | str, out_path: Path | str, title: str = "How the rewards separate behaviours"
):
    """Mean of each reward component (answer F1, search key, summed IG, summed RP) per trajectory kind,
    and the episode return under each reward configuration."""
    plt = _pyplot()
    import numpy as np

    rows = read_csv(csv_path)
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    comps = ["answer_f1", "search_key", "info_gain", "redundancy"]
    configs = [k for k in rows[0] if k.startswith("return/")]
    mean = {(k, c): np.mean([float(r[c]) for r in rows if r["kind"] == k]) for k in kinds for c in comps + configs}
    fig, ax = plt.subplots(1, 2, figsize=(15, 3.8))
    _grouped_bars(ax[0], kinds, comps, mean, labels=comps)
    ax[0].set_title("reward components (mean per kind; IG and RP summed over steps)", fontsize=9)
    ax[0].legend(fontsize=8)
    _grouped_bars(ax[1], kinds, configs, mean, labels=[c.split("/", 1)[1] for c in configs])
    ax[1].axhline(0, color="black", lw=0.5)
    ax[1].set_title("episode return (sum of token rewards) per reward configuration", fontsize=9)
    ax[1].legend(fontsize=7, ncol=2)
    return _finish(fig, out_path, title)


def plot_token_layout(
    json_path: Path | str, out_path: Path | str, title: str = "Token-level rewards of one trajectory"
):
    """Reward on every response token; forced (information) tokens shaded, search ends marked."""
    import json

    plt = _pyplot()

    layout = json.loads(Path(json_path).read_text())
    rewards, mask = layout["rewards"], layout["loss_mask"]
    fig, ax = plt.subplots(figsize=(12, 3))
    start = None
    for i, m in enumerate(mask + [1]):
        if m == 0 and start is None:
            start = i
        if m == 1 and start is not None:
            ax.axvspan(
                start,
                i,
                color="#ddd",
                lw=0,
                label="forced <information> tokens (mask 0)" if start == mask.index(0) else None,
            )
            start = None
    ax.bar(range(len(rewards)), rewards, width=3, color=["#c33" if r < 0 else "#2c7a3f" for r in rewards])
    for idx in layout["search_end_idx"]:
        ax.axvline(idx, color="#6a9fd4", ls=":", lw=1)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("response token")
    ax.set_ylabel("reward")
    s = layout["scores"]
    ax.set_title(
        f"{title} ({layout['kind']}): step rewards {[round(x, 3) for x in s['step_rewards']]} on </search>, "
        f"final {s['final_reward']:.3f} on the last token",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="upper left")
    return _finish(fig, out_path)


CURVE_KEYS = (
    ("reward/answer_f1", "answer F1"),
    ("reward/search_key", "search-key score"),
    ("reward/info_gain", "information gain (sum per episode)"),
    ("rollout/num_searches", "searches per question"),
)
"""Training-curve panels: metric key and axis label."""


def _label_panels(axes, keys) -> None:
    """Per-metric curve panels: x label, the metric's name as title, a light grid; the legend on the first."""
    for ax, (_, name) in zip(axes, keys):
        ax.set_xlabel("update")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)


def plot_training_curves(
    runs: dict[str, Path | str], out_path: Path | str, keys=CURVE_KEYS, title: str = "Training curves"
):
    """One panel per metric, one line per run (label -> metrics JSONL), metric vs update step."""
    import json

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.0), squeeze=False)
    for label, path in runs.items():
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        for ax, (key, _) in zip(axes[0], keys):
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, label=label)
    _label_panels(axes[0], keys)
    return _finish(fig, out_path, title)


def plot_main_results(
    results_csv: Path | str,
    paper_csv: Path | str,
    out_path: Path | str,
    paper_rows: tuple[tuple[str, str], ...] = (
        ("qwen2.5-3b", "search_r1_instruct"),
        ("qwen2.5-3b", "stepsearch_instruct"),
    ),
    title: str = "EM and F1 per dataset: ours beside the paper",
):
    """Two panels (EM, F1): grouped bars per dataset, our methods (with 95 % bootstrap intervals)
    and selected rows of the paper's main table (hatched)."""
    import numpy as np

    plt = _pyplot()
    ours = read_csv(results_csv)
    datasets = list(dict.fromkeys(r["dataset"] for r in ours))
    labels = list(dict.fromkeys(r["label"] for r in ours))
    paper = {(r["model"], r["method"]): r for r in read_paper_results(paper_csv) if r["table"] == "main"}
    series = labels + [f"paper {m} {meth}" for m, meth in paper_rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(datasets) * 2), 3.6), squeeze=False)
    width = 0.8 / len(series)
    for ax, metric in zip(axes[0], ("em", "f1")):
        x = np.arange(len(datasets))
        for i, name in enumerate(series):
            if name in labels:
                rows = {r["dataset"]: r for r in ours if r["label"] == name}
                vals = [float(rows[d][metric]) if d in rows else np.nan for d in datasets]
                err = [
                    [float(rows[d][metric]) - float(rows[d][f"{metric}_lo"]) if d in rows else 0 for d in datasets],
                    [float(rows[d][f"{metric}_hi"]) - float(rows[d][metric]) if d in rows else 0 for d in datasets],
                ]
                ax.bar(x + i * width, vals, width, yerr=err, capsize=2, label=name)
            else:
                key = paper_rows[i - len(labels)]
                vals = [paper[key].get(f"{d}_{metric}", np.nan) if key in paper else np.nan for d in datasets]
                ax.bar(x + i * width, vals, width, hatch="//", alpha=0.5, label=name)
        ax.set_xticks(x + width * (len(series) - 1) / 2, datasets)
        ax.set_ylabel(metric.upper())
        ax.grid(axis="y", alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, out_path, title)


def read_paper_results(path: Path | str) -> list[dict]:
    """The paper's published EM / F1 (`reference/paper_results.csv`), one row per table x model x method."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in list(r):
            if k.endswith(("_em", "_f1")):
                r[k] = float(r[k])
    return rows


def paper_table(rows: list[dict], table: str, model: str | None = None) -> list[dict]:
    """One of the paper's tables (``table``: main, rl_comparison, ablation_*; ``model`` or all) in a page-wide shape:
    a row per (model, method, metric), a column per dataset -- the csv's eight score columns side by side do not fit.

    >>> paper_table([{"table": "main", "model": "m", "method": "rag", "hotpotqa_em": 0.2, "hotpotqa_f1": 0.3}], "main")
    [{'table': 'main', 'model': 'm', 'method': 'rag', 'metric': 'EM', 'hotpotqa': 0.2}, \
{'table': 'main', 'model': 'm', 'method': 'rag', 'metric': 'F1', 'hotpotqa': 0.3}]
    """
    out = []
    for r in rows:
        if r["table"] != table and not (table.endswith("*") and r["table"].startswith(table[:-1])):
            continue
        if model is not None and r["model"] != model:
            continue
        for metric in ("em", "f1"):
            scores = {k.removesuffix(f"_{metric}"): v for k, v in r.items() if k.endswith(f"_{metric}")}
            out.append(
                {"table": r["table"], "model": r["model"], "method": r["method"], "metric": metric.upper(), **scores}
            )
    return out


STUDY_CURVE_KEYS = (
    ("reward/token_sum", "training reward (sum per episode)"),
    ("reward/search_key", "search-key score"),
    ("reward/info_gain", "information gain"),
    ("reward/answer_f1", "answer F1"),
    ("losses/kl_ref", "KL to the warm start"),
)
"""Panels of the study's training curves."""


def plot_study_curves(
    runs: dict[str, list[Path | str]], out_path: Path | str, keys=STUDY_CURVE_KEYS, title: str = "Training curves"
):
    """One panel per metric; per arm (label -> its seeds' metrics JSONL) the mean over seeds and a min-max band."""
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for label, paths in runs.items():
        seeds = [[r for _, r in iter_json_records(p)] for p in paths]
        steps = min(len(s) for s in seeds)
        x = np.arange(1, steps + 1)
        for ax, (key, _) in zip(axes[0], keys):
            y = np.array([[s[i].get(key, np.nan) for i in range(steps)] for s in seeds], dtype=float)
            (line,) = ax.plot(x, np.nanmean(y, 0), label=f"{label} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
            ax.fill_between(x, np.nanmin(y, 0), np.nanmax(y, 0), color=line.get_color(), alpha=0.2)
    _label_panels(axes[0], keys)
    return _finish(fig, out_path, title)


def plot_study_heldout(
    summary_csv: Path | str,
    paper_csv: Path | str,
    out_path: Path | str,
    arms: tuple[str, ...] = ("warm", "ppo", "steppo"),
    paper_model: str = "qwen2.5-3b-base",
    title: str = "Held-out EM: ours (mean over seeds, 95 % interval) beside the paper's RL comparison",
):
    """EM per dataset: each arm's seed-mean with the range of its seeds' 95 % intervals, and the paper's
    `rl_comparison` rows of ``paper_model`` (hatched)."""
    import numpy as np

    plt = _pyplot()
    rows = [r for r in read_csv(summary_csv) if r["metric"] == "em" and r["seed"] != "paired"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    paper = {
        r["method"]: r
        for r in read_paper_results(paper_csv)
        if r["table"] == "rl_comparison" and r["model"] == paper_model
    }
    series = [a for a in arms if any(r["arm"] == a for r in rows)] + [f"paper {m}" for m in ("ppo", "steppo")]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.8 * len(datasets)), 3.6))
    width, x = 0.8 / len(series), np.arange(len(datasets))
    for i, name in enumerate(series):
        if name.startswith("paper "):
            vals = [paper.get(name[6:], {}).get(f"{d}_em", np.nan) for d in datasets]
            ax.bar(x + i * width, vals, width, hatch="//", alpha=0.5, label=f"{name} ({paper_model})")
            continue
        per = [[r for r in rows if r["arm"] == name and r["dataset"] == d] for d in datasets]
        mean = [np.mean([float(r["value"]) for r in p]) if p else np.nan for p in per]
        lo = [m - min(float(r["lo"]) for r in p) if p else 0 for m, p in zip(mean, per)]
        hi = [max(float(r["hi"]) for r in p) - m if p else 0 for m, p in zip(mean, per)]
        ax.bar(x + i * width, mean, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_xticks(x + width * (len(series) - 1) / 2, datasets)
    ax.set_ylabel("EM")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, out_path, title)
