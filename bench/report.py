"""Render docs/performance.md (tables + figures) from the benchmark JSON files under runs/bench/."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import OUT_DIR
from stepsearch_lib.config import PROJECT_ROOT
from stepsearch_lib.fileio import atomic_path

DOCS = PROJECT_ROOT / "docs"


def _load(name: str) -> dict | None:
    path = OUT_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join(
        "| "
        + " | ".join(format(r.get(k, ""), f) if r.get(k) is not None and f else str(r.get(k, "")) for k, _, f in cols)
        + " |\n"
        for r in rows
    )
    return head + body


def _figures(retr: dict | None, roll: dict | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    if retr:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, source in zip(axes, ("real", "synthetic")):
            rows = [r for r in retr["scaling"] if r["source"] == source]
            for name in dict.fromkeys(r["index"] for r in rows):
                pts = [r for r in rows if r["index"] == name]
                ax.plot([p["n"] for p in pts], [p["qps"] for p in pts], marker="o", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{source} corpus size")
            ax.set_ylabel("queries / s (batch 32)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        out.append(_save(fig, "performance_retrieval_scaling.png"))
    if roll:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for dtype in dict.fromkeys(r.get("generation_dtype", "float32") for r in roll["rows"]):
            pts = [r for r in roll["rows"] if r.get("generation_dtype", "float32") == dtype]
            ax.plot(
                [r["batch"] for r in pts], [r["tokens_per_s"] for r in pts], marker="o", label=f"sampling in {dtype}"
            )
        ax.legend(fontsize=8)
        ax.set_xlabel("rollout batch size")
        ax.set_ylabel("generated tokens / s")
        ax.grid(alpha=0.3)
        out.append(_save(fig, "performance_rollout_batch.png"))
    return out


def _save(fig, name: str) -> str:
    path = DOCS / "figures" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"figures/{name}"


def _fast_rl() -> str:
    """The fast-CPU-RL summary (`bench/fast_rl.py`, committed under bench/results/)."""
    import json

    from bench.fast_rl import RESULTS

    if not (RESULTS / "summary.json").is_file():
        return "\n## Fast CPU RL\n\nNot measured yet (`make bench BENCH=rl`).\n"
    s = json.loads((RESULTS / "summary.json").read_text())
    d = json.loads((RESULTS / "fast_rl.json").read_text())
    g = s["goals"]
    rows = [
        ("rollout_speedup_b16", "batch-16 KV rollout / per-sample HF generate, tokens/s", ">=", ".2f"),
        ("rollout_roofline_fraction_b16", "batch-16 tokens/s / roofline", ">=", ".3f"),
        ("update_speedup", "StePPO update of 8 trajectories: float32 path / new path", ">=", ".2f"),
        ("rl_step_s_8q", "median full RL step, 8 questions (s)", "<=", ".1f"),
        ("steppo_over_ppo", "StePPO / PPO update time", "<=", ".2f"),
    ]
    out = [
        f"\n## Fast CPU RL (`bench/fast_rl.py`)\n\n{s['cpu_model']}, {s['torch_threads']} torch threads, peak RSS "
        f"{s['peak_rss_mb']:,.0f} MB; {d['policy']} ({'warm start' if d['warm_start'] else 'zero-shot'}), "
        f"{d['questions']} MuSiQue dev questions, BM25 over the full corpus.\n",
        "| key | what | value | goal | met |",
        "|---|---|---|---|---|",
    ]
    for key, what, op, fmt in rows:
        met = s[key] >= g[key] if op == ">=" else s[key] <= g[key]
        out.append(f"| `{key}` | {what} | {format(s[key], fmt)} | {op} {g[key]} | {'yes' if met else 'no'} |")
    r = d["rollout"]
    out.append(
        "\n| rollout | questions | generated tokens | s | tokens/s | searches / question |\n|---|---|---|---|---|---|"
    )
    for name, row in r.items():
        out.append(
            f"| {name} | {row['questions']} | {row['generated_tokens']:,} | {row['seconds']:.1f} | "
            f"{row['tokens_per_s']:.1f} | {row['searches_per_question']:.2f} |"
        )
    roof = d["roofline_b16"]
    out.append(
        f"\nRoofline at batch 16: bf16 GEMM {roof['gemm_bf16_gflops']:.0f} GFLOP/s, copy bandwidth "
        f"{roof['memory_bandwidth_gbs']:.1f} GB/s, {roof['params'] / 1e6:.0f} M weights -> "
        f"{roof['bound_tokens_per_s']:.0f} tokens/s ({roof['bound']}-bound). Update loss difference between "
        f"the two paths: " + ", ".join(f"{k} {v:.2e}" for k, v in s["update_loss_difference"].items()) + ".\n"
    )
    return "\n".join(out)


def _update_profile() -> str:
    """Where one update's time goes (`bench/update_profile.py`, committed under bench/results/)."""
    import json

    from bench.update_profile import RESULTS

    path = RESULTS / "update_profile.json"
    if not path.is_file():
        return "\n## Update profile\n\nNot measured yet (`make bench BENCH=update`).\n"
    u = json.loads(path.read_text())
    ph = u["phases"]
    return "\n".join(
        [
            "\n## Update profile (`bench/update_profile.py`)\n",
            f"One cpu StePPO update of 8 rows ({u['real_tokens']:,} real tokens, {u['padded_tokens']:,} padded), "
            f"minibatch 2, bf16 autocast, {u['torch_threads']} threads. Untrimmed (before) "
            f"{min(u['update_seconds']['untrimmed']):.1f} s, trimmed {min(u['update_seconds']['trimmed']):.1f} s "
            f"({u['trim_speedup']:.2f}x, the same losses). Matmul floor at the measured {u['gemm_bf16_gflops']:.0f} "
            f"GFLOP/s bf16 GEMM: {u['matmul_tflop']:.1f} TFLOP -> {u['matmul_floor_s']:.1f} s; the trimmed update "
            f"runs at {u['fraction_of_floor']:.2f} of it.\n",
            "| phase | s |",
            "|---|---|",
            *(f"| {k.removesuffix('_s').replace('_', ' ')} | {v:.2f} |" for k, v in ph.items()),
            "",
        ]
    )


def _study_jobs() -> str:
    """Two study runs side by side vs one on every core (`bench/study_jobs.py`, committed under bench/results/)."""
    import json

    from bench.study_jobs import RESULTS

    path = RESULTS / "study_jobs.json"
    if not path.is_file():
        return "\n## Study runs side by side\n\nNot measured yet (`make bench BENCH=study_jobs`).\n"
    j = json.loads(path.read_text())
    side = max(j["unit_s"]["side_by_side"])
    return (
        "\n## Study runs side by side (`bench/study_jobs.py`)\n\n"
        f"One study update (rollout of 8 questions + one StePPO update) alone on {j['cores']} threads: "
        f"{j['unit_s']['alone']:.0f} s; {j['cores']} runs at once on 1 thread each: {side:.0f} s each. Work per "
        f"second side by side: x{j['throughput_ratio']:.2f} (rollout x{j['rollout_ratio']:.2f}, update "
        f"x{j['update_ratio']:.2f}); the same rollouts either way: {j['same_rollout']}. Hence `make study JOBS=2`.\n"
    )


def render() -> str:
    rew, retr, roll, train, ann = (_load(n) for n in ("rewards", "retrieval", "rollout", "training", "ann"))
    figs = _figures(retr, roll)
    parts = [
        "# Performance\n\nGenerated by `make bench` (`python -m bench`) from `runs/bench/*.json`; "
        "do not edit by hand. Ratios are measured side by side in one process; absolute numbers hold "
        "only for the machine listed.\n"
    ]
    parts.append(_fast_rl())
    parts.append(_update_profile())
    parts.append(_study_jobs())
    any_ = next((x for x in (rew, retr, roll, train) if x), None)
    if any_:
        m = any_["machine"]
        parts.append(
            f"Machine: {m['cpus']} CPUs ({m['processor']}), torch {m['torch']} with {m['torch_threads']} "
            f"threads, CUDA: {m['cuda'] or 'none'}.\n"
        )
    if rew:
        parts.append(
            f"## Rewards\n\nInformation gain on {rew['trajectories']} real trajectories "
            f"({rew['search_steps']} search steps): closed-form TF-IDF {rew['fast_traj_per_s']:.0f} traj/s vs "
            f"per-pair reference {rew['reference_traj_per_s']:.1f} traj/s = **{rew['speedup']:.0f}x** "
            f"(goal >= 20x); max |difference| {rew['max_abs_difference']:.1e}.\n"
        )
    if retr:
        parts.append(
            f"## Retrieval\n\n{retr['corpus']:,} passages, {retr['queries']} real dev questions, "
            f"batches of {retr['batch']}; query encoding {retr['encode_qps']:.0f} q/s (not in the FAISS rows). "
            f"Goal (ANN >= 10x Flat QPS at recall@10 >= 0.98 on this corpus): "
            + (
                f"{'met' if ann['goal_met'] else 'not met'} by the sweep below (these rows use the library's "
                f"default search parameters)"
                if ann
                else f"{'met' if retr['goal_met'] else 'not met'}"
            )
            + ".\n\n"
        )
        parts.append(
            _table(
                retr["rows"],
                [
                    ("index", "index", ""),
                    ("qps", "QPS", ".0f"),
                    ("recall10_vs_flat", "overlap@10 with Flat", ".3f"),
                    ("gold_recall10", "gold recall@10", ".3f"),
                    ("build_s", "build s", ".1f"),
                    ("index_mb", "index MB", ".1f"),
                ],
            )
        )
        parts.append("\nScaling (FAISS; synthetic = clustered random unit vectors):\n\n")
        parts.append(
            _table(
                retr["scaling"],
                [
                    ("source", "source", ""),
                    ("n", "vectors", ","),
                    ("index", "index", ""),
                    ("qps", "QPS", ".0f"),
                    ("recall10_vs_flat", "recall@10 vs Flat", ".3f"),
                    ("build_s", "build s", ".1f"),
                    ("index_mb", "MB", ".1f"),
                ],
            )
        )
    if ann:
        best = ann["best_at_goal_recall"]
        verdict = (
            f"fastest point at recall@10 >= 0.98: **{best['index']}** ({best['param']} {best['value']}), "
            f"{best['qps']:.0f} QPS = **{best['speedup_vs_flat']:.1f}x** Flat ({ann['flat_qps']:.0f} QPS), "
            f"recall {best['recall10_vs_flat']:.3f}; goal {'met' if ann['goal_met'] else 'not met'}"
            if best
            else "no swept point reaches recall@10 0.98"
        )
        parts.append(
            f"\n### ANN operating points\n\nEvery index family swept over its search parameter on the "
            f"{ann['corpus']:,}-passage corpus ({ann['queries']} questions, batches of {ann['batch']}, same "
            f"process): {verdict}. The recall / QPS frontier:\n\n"
        )
        parts.append(
            _table(
                ann["frontier"],
                [
                    ("index", "index", ""),
                    ("param", "parameter", ""),
                    ("value", "value", ""),
                    ("qps", "QPS", ".0f"),
                    ("speedup_vs_flat", "x Flat", ".1f"),
                    ("recall10_vs_flat", "recall@10 vs Flat", ".3f"),
                    ("index_mb", "MB", ".1f"),
                    ("build_s", "build s", ".1f"),
                ],
            )
        )
        parts.append("\nAll swept points are in `runs/bench/ann.json`.\n")
    if roll:
        d = roll["decode"]
        parts.append(
            f"\n## Rollout\n\n{roll['policy']} ({'SFT warm start' if roll['warm_start'] else 'base'}), "
            f"{roll['questions']} dev questions, greedy, multi-turn with real retrieval:\n\n"
        )
        parts.append(
            _table(
                roll["rows"],
                [
                    ("batch", "batch", ""),
                    ("generation_dtype", "sampling dtype", ""),
                    ("tokens_per_s", "generated tokens/s", ".1f"),
                    ("speedup_vs_batch1", "x batch 1", ".2f"),
                    ("seconds", "s", ".0f"),
                    ("searches_per_question", "searches/q", ".2f"),
                ],
            )
        )
        parts.append(
            f"\nSingle-stream decode: {d['tokens_per_s']:.1f} tokens/s; bound = measured bandwidth "
            f"{d['memory_bandwidth_gbs']:.1f} GB/s / {d['weight_mb']:.0f} MB of weights per token = "
            f"{d['bound_tokens_per_s']:.1f} tokens/s; **{100 * d['fraction_of_bound']:.0f} %** of the bound (goal >= 50 %).\n"
        )
    if train:
        parts.append(
            f"\n## Training\n\n{train['policy']}, {train['trajectories']} trajectories "
            f"({train['sequence_tokens']} tokens wide, {train['trainable_tokens']} trainable tokens): StePPO update "
            f"{train['steppo_update_s']:.1f} s vs global-reward PPO {train['ppo_update_s']:.1f} s = "
            f"**{train['ratio']:.2f}x** (goal <= 1.3x).\n\n"
        )
        parts.append(
            _table(
                train["variants"],
                [
                    ("load_in_4bit", "4-bit", ""),
                    ("critic", "critic", ""),
                    ("update_s", "update s", ".1f"),
                    ("peak_rss_mb", "peak RSS MB", ".0f"),
                ],
            )
        )
        parts.append(
            "\n" + _table(train["by_length"], [("tokens", "sequence tokens", ""), ("update_s", "update s", ".1f")])
        )
    parts += [f"\n![]({f})\n" for f in figs]
    missing = [n for n, x in (("rollout", roll), ("training", train)) if x is None]
    if missing:
        parts.append(
            f'\nNot measured yet on this machine: {", ".join(missing)} (`make bench BENCH="{" ".join(missing)}"`).\n'
        )
    return "\n".join(parts)


def main() -> Path:
    DOCS.mkdir(exist_ok=True)
    path = DOCS / "performance.md"
    extra = DOCS / "performance_notes.md"
    text = render() + (("\n" + extra.read_text()) if extra.is_file() else "")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    print(f"[bench] wrote {path}")
    return path


if __name__ == "__main__":
    main()
