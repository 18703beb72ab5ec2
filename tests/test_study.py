"""The cpu study's held-out metrics on real rollouts, and its summary's paired comparisons by hand."""

import json
import math
import os
import sys

import pytest

from stepsearch_lib import jobs, study, study_inputs, study_results, study_stats
from stepsearch_lib.cli import UsageError
from stepsearch_lib.config import get_config
from stepsearch_lib.data import passage_key
from stepsearch_lib.fileio import MissingInputError, read_csv
from stepsearch_lib.heldout import METRICS, evaluate_heldout, heldout_gold
from stepsearch_lib.retrieval import load_retriever


def test_heldout_rows_score_real_rollouts(protocol_model, tokenizer, musique_dev, index_dirs, small_corpus):
    cfg = get_config("smoke", {"rollout.max_new_tokens": 64, "rollout.doc_words": 20})  # as the protocol model learnt
    records = musique_dev[:4]
    rows = evaluate_heldout(
        protocol_model, tokenizer, {"musique": records}, load_retriever(index_dirs / "bm25"), cfg, small_corpus
    )
    assert [r["id"] for r in rows] == [r.id for r in records]
    ids = {passage_key(p.title, p.text): p.id for p in small_corpus}
    for row, rec in zip(rows, records):
        assert set(METRICS) <= set(row)
        gold = heldout_gold(rec, ids)
        assert gold["gold_keys"] and all("#" not in k[0] for k in gold["gold_keys"])  # placeholders resolved
        assert len(gold["gold_ids"]) == len(gold["gold_docs"])  # every gold paragraph is in the small corpus
        assert 0 <= row["gold_recall"] <= 1 and 0 <= row["f1"] <= 1 and row["em"] in (0.0, 1.0)
    assert sum(r["searches"] for r in rows) > 0  # the protocol model searches


def write_predictions(folder, name, values):
    """values: {question id: em}; every other metric copies em (F1) or is NaN (search_key)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": q,
            "dataset": "musique",
            "em": v,
            "f1": v,
            "format_ok": 1.0,
            "searches": 1.0,
            "search_key": math.nan,
            "gold_recall": v,
            "info_gain_sum": 0.0,
        }
        for q, v in values.items()
    ]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_summary_pairs_arms_over_seeds_and_questions(tmp_path):
    """EM by hand: warm (0, 0); StePPO s0 (1, 0), s1 (1, 1); PPO s0 (0, 0), s1 (1, 0).
    StePPO - PPO over the 4 (seed, question) pairs: (1 + 0 + 0 + 1) / 4 = 0.5; StePPO - warm: 3/4."""
    preds = tmp_path / "predictions"
    write_predictions(preds, "warm", {"q1": 0.0, "q2": 0.0})
    write_predictions(preds, "steppo-s0", {"q1": 1.0, "q2": 0.0})
    write_predictions(preds, "steppo-s1", {"q1": 1.0, "q2": 1.0})
    write_predictions(preds, "ppo-s0", {"q1": 0.0, "q2": 0.0})
    write_predictions(preds, "ppo-s1", {"q1": 1.0, "q2": 0.0})
    rows = list(csv_rows(study_stats.summarize(["steppo", "ppo"], [0, 1], tmp_path, n_samples=200)))
    get = {(r["arm"], r["seed"], r["metric"]): r for r in rows}
    assert float(get[("steppo - ppo", "paired", "em")]["value"]) == pytest.approx(0.5)
    assert int(get[("steppo - ppo", "paired", "em")]["n"]) == 4
    assert float(get[("steppo - warm", "paired", "em")]["value"]) == pytest.approx(0.75)
    assert float(get[("steppo", "1", "em")]["value"]) == 1.0 and float(get[("ppo", "1", "em")]["value"]) == 0.5
    assert ("steppo - ppo", "paired", "search_key") not in get  # all NaN: no pairs, no row
    lo, hi = float(get[("steppo - ppo", "paired", "em")]["lo"]), float(get[("steppo - ppo", "paired", "em")]["hi"])
    assert lo <= 0.5 <= hi
    md = (tmp_path / "summary.md").read_text()  # the README's tables: the same numbers, rendered
    assert (
        "| steppo | em | 0.750 (0.500..1.000, 2 seeds) |" in md and "| ppo | em | 0.250 (0.000..0.500, 2 seeds) |" in md
    )
    assert f"| steppo - ppo | em | +0.500 [{float(lo):+.3f}, {float(hi):+.3f}] n=4 |" in md
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for name in ("steppo-full-s0", "steppo-full-s1", "ppo-global_only-s0", "ppo-global_only-s1"):
        lines = [
            {
                "step": k,
                "reward/token_sum": 0.1 * k,
                "reward/search_key": 0.2,
                "reward/info_gain": 0.3,
                "reward/answer_f1": 0.1,
                "losses/kl_ref": 0.01 * k,
            }
            for k in (1, 2, 3)
        ]
        (metrics / f"{name}-study.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    figures = study_results.study_figures(["steppo", "ppo"], [0, 1], tmp_path)
    assert [f.name for f in figures] == ["training_curves.png", "heldout_em.png"]
    assert all(f.stat().st_size > 10_000 for f in figures)


def csv_rows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def test_a_missing_run_names_the_command_that_evaluates_it(tmp_path):
    with pytest.raises(MissingInputError, match="stepsearch study --phase eval"):
        study_stats.summarize(["steppo"], [0], tmp_path)


def write_pilot(folder, lr, rewards, kls):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"step": i + 1, "reward/token_sum": r, "losses/kl_ref": k} for i, (r, k) in enumerate(zip(rewards, kls))]
    path = folder / f"steppo-full-s0-pilot-lr{lr:g}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_pilot_chooses_the_fastest_rising_rate_that_stays_near_the_warm_start(tmp_path):
    """Three rates: the middle one rises fastest within the KL limit; the largest rises faster but drifts."""
    n = 15
    write_pilot(tmp_path / "pilot", 2e-5, [0.1 + 0.001 * i for i in range(n)], [0.001] * n)
    write_pilot(tmp_path / "pilot", 5e-5, [0.1 + 0.01 * i + 0.002 * (-1) ** i for i in range(n)], [0.01] * n)
    write_pilot(tmp_path / "pilot", 1e-4, [0.1 + 0.03 * i for i in range(n)], [0.02 * i for i in range(n)])
    csv_path = study_results.pilot_report((2e-5, 5e-5, 1e-4), tmp_path)
    rows = {float(r["actor_lr"]): r for r in read_csv(csv_path)}
    assert [lr for lr, r in rows.items() if r["chosen"] == "True"] == [5e-5]
    assert "within 0.05" in rows[5e-5]["why"] and rows[2e-5]["why"] == ""
    # the trend by hand: slope 0.001 exactly for the first rate; the alternating one is 0.01 within its interval
    assert float(rows[2e-5]["reward_slope"]) == pytest.approx(0.001)
    assert float(rows[5e-5]["slope_lo"]) < 0.01 < float(rows[5e-5]["slope_hi"])
    assert float(rows[1e-4]["kl_last5"]) == pytest.approx(0.02 * 12)  # updates 11..15 -> i = 10..14, mean 12
    assert float(rows[1e-4]["kl_last5_max"]) == pytest.approx(0.02 * 14)
    assert (tmp_path / "figures" / "pilot_curves.png").is_file()
    # every rate drifting: the smallest, and the reason says so
    assert study_stats.choose_lr([{**rows[1e-4], "actor_lr": 1e-4, "kl_last5_max": 1.0, "reward_slope": 1.0}])[
        1
    ].startswith("no rate")


def test_a_rate_whose_last_updates_leave_the_kl_bound_is_not_chosen_even_when_their_mean_stays_within(tmp_path):
    """The cpu pilot's case: KL ~0.01 then 0.056-0.078 over the last three updates (last-5 mean 0.045 < 0.05)."""
    n = 15
    write_pilot(tmp_path / "pilot", 5e-5, [0.1 + 0.01 * i for i in range(n)], [0.002] * n)
    kls = [0.001] * 10 + [0.013, 0.009, 0.056, 0.078, 0.077]
    write_pilot(tmp_path / "pilot", 1e-4, [0.1 + 0.09 * i for i in range(n)], kls)
    rows = {float(r["actor_lr"]): r for r in read_csv(study_results.pilot_report((5e-5, 1e-4), tmp_path))}
    assert float(rows[1e-4]["kl_last5"]) == pytest.approx(0.0466) and float(rows[1e-4]["kl_last5_max"]) == 0.078
    assert rows[5e-5]["chosen"] == "True" and rows[1e-4]["chosen"] == "False"


def write_run(folder, name, rewards, kls, frozen=2):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"step": i + 1, "reward/token_sum": r, "losses/kl_ref": k, "losses/actor_updated": float(i >= frozen)}
        for i, (r, k) in enumerate(zip(rewards, kls))
    ]
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_movement_check_separates_a_moved_policy_from_estimator_noise(tmp_path):
    """StePPO: KL grows to ~0.01 after the 2 frozen updates and the reward rises, in every seed; PPO: KL stays at the
    frozen updates' noise (+-2e-4) and the reward is flat noise. By hand for StePPO seed 0: the last 10 KL values are
    0.001 * (11..20) -> mean 0.0155; the slope of 0.3 + 0.01 i is 0.01."""
    n, metrics = 20, tmp_path / "metrics"
    for seed in (0, 1, 2):
        noise = [2e-4 * (-1) ** (i + seed) for i in range(n)]
        moved_kl = noise[:2] + [0.001 * (i + 1) + 0.0005 * seed for i in range(2, n)]
        write_run(metrics, f"steppo-full-s{seed}-study", [0.3 + 0.01 * i + 0.02 * seed for i in range(n)], moved_kl)
        write_run(metrics, f"ppo-global_only-s{seed}-study", [0.3 + 0.05 * (-1) ** (i + seed) for i in range(n)], noise)
    rows = {
        (r["arm"], r["seed"]): r for r in read_csv(study_results.movement_check(["steppo", "ppo"], [0, 1, 2], tmp_path))
    }
    assert float(rows[("steppo", "0")]["kl_last"]) == pytest.approx(0.0155)
    assert float(rows[("steppo", "0")]["reward_slope"]) == pytest.approx(0.01)
    assert float(rows[("steppo", "0")]["kl_floor"]) == pytest.approx(2e-4)
    assert rows[("steppo", "mean")]["moved"] == "True" and rows[("steppo", "mean")]["rose"] == "True"
    assert float(rows[("steppo", "mean")]["kl_last"]) == pytest.approx(0.0155 + 0.0005)  # seeds add 0, 5e-4, 1e-3
    assert rows[("ppo", "mean")]["moved"] == "False" and rows[("ppo", "mean")]["rose"] == "False"
    lo, hi = float(rows[("ppo", "mean")]["slope_lo"]), float(rows[("ppo", "mean")]["slope_hi"])
    assert lo < 0 < hi
    with pytest.raises(MissingInputError, match="--arms grpo --seeds 0"):
        study_results.movement_check(["grpo"], [0], tmp_path)


def test_each_run_publishes_its_resolved_config(tmp_path):
    """Every section, the run's algorithm and reward, and the warm start relative to the run folder (portable)."""
    cfg = get_config("smoke", {"artifact_root": str(tmp_path / "runs")}, seed=2)
    cfg = study.apply_overrides(cfg, {"train.init_adapter": str(cfg.path("checkpoints", "sft-s0-abc"))})
    path = study.publish_config(cfg, "ppo", "global_only", "study", tmp_path / "config")
    assert path.name == "ppo-global_only-s2-study.json"
    resolved = json.loads(path.read_text())
    assert resolved["train"]["algo"] == "ppo" and resolved["reward"]["name"] == "global_only"
    assert resolved["seed"] == 2 and resolved["train"]["init_adapter"] == "checkpoints/sft-s0-abc"
    assert set(resolved) >= {"data", "model", "retrieval", "rollout", "reward", "ppo", "train", "eval"}


def test_jobs_run_side_by_side_with_the_cores_split_and_failures_named(tmp_path):
    show = "import os, sys; print('threads', os.environ['OMP_NUM_THREADS']); sys.exit(int(sys.argv[1]))"
    tasks = [(f"t{i}", [sys.executable, "-c", show, str(code)]) for i, code in enumerate((0, 0, 3))]
    with pytest.raises(UsageError, match=r"t2 \(exit 3; log .*t2.log\)"):
        jobs.run_jobs(tasks, 2, tmp_path / "logs")
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert [(tmp_path / "logs" / f"t{i}.log").read_text() for i in range(3)] == [f"threads {threads}\n"] * 3
    jobs.run_jobs(tasks[:1], 2, tmp_path / "logs")  # one task: the same threads (they are part of its numerics)
    assert (tmp_path / "logs" / "t0.log").read_text() == f"threads {threads}\n"


def test_a_jobs_parent_splits_the_study_into_one_worker_per_run():
    import argparse

    args = argparse.Namespace(
        profile="cpu", set=["train.steps=4"], phase="train", arms=["steppo", "ppo"], seeds=[0, 1], stop_after=2
    )
    tasks = study.study_jobs(args, 2)
    assert [label for label, _ in tasks] == ["steppo-s0", "ppo-s0", "steppo-s1", "ppo-s1"]
    argv = tasks[1][1]
    assert argv[argv.index("--arms") + 1] == "ppo" and argv[argv.index("--seeds") + 1] == "0"
    assert (
        "--worker" in argv and argv[argv.index("--set") + 1] == "train.steps=4" and argv[-2:] == ["--stop-after", "2"]
    )
    pilot = study.study_jobs(argparse.Namespace(**{**vars(args), "phase": "pilot", "lrs": [2e-5, 1e-4]}), 2)
    assert [label for label, _ in pilot] == ["pilot-lr2e-05", "pilot-lr0.0001"]
    evals = study.study_jobs(argparse.Namespace(**{**vars(args), "phase": "eval"}), 2)
    sets = [d for d, _ in get_config("cpu").data.eval_files]  # the profile's order
    assert sorted(sets) == ["2wiki", "bamboogle", "hotpotqa", "musique"]
    assert [label for label, _ in evals] == [
        f"eval-{name}-{d}" for name in ["warm", "steppo-s0", "ppo-s0", "steppo-s1", "ppo-s1"] for d in sets
    ]
    assert [argv[-4:] for _, argv in evals[:2]] == [["--only", "warm", "--datasets", d] for d in sets[:2]]


def test_only_finished_runs_are_evaluated(tmp_path):
    """A run stopped by --stop-after is not its final checkpoint: the eval phase names the command that finishes it."""
    overrides = {"artifact_root": str(tmp_path / "runs")}
    cfg = study.study_config("smoke", overrides, 0)
    folder = cfg.path("checkpoints", "steppo-full-s0-study")
    (folder / "step-000002").mkdir(parents=True)
    (folder / "step-000002" / "state.json").write_text(json.dumps({"step": 2}))
    (folder / "latest").write_text("step-000002")
    with pytest.raises(MissingInputError, match=rf"has 2 of {cfg.train.steps} updates: .*--arms steppo --seeds 0"):
        study.study_models("smoke", ["steppo"], [0], overrides)
    with pytest.raises(MissingInputError, match="--arms ppo --seeds 0"):
        study.study_models("smoke", ["ppo"], [0], overrides)


def test_the_notebooks_see_what_the_study_has_committed_so_far(tmp_path):
    assert study_results.committed_study(tmp_path)["missing"]["warm_starts"] == "make study PHASE=warm"
    (tmp_path / "warm_starts.csv").write_text("warm_start,when,format_ok\nquestion,after,1.0\n")
    for name in ("steppo-full-s1-study", "steppo-full-s0-study", "steppo-full-s0-pilot-lr2e-05"):
        write_run(tmp_path / "metrics", name, [0.1, 0.2], [0.0, 0.0])
    seen = study_results.committed_study(tmp_path)
    assert seen["warm_starts"] == [{"warm_start": "question", "when": "after", "format_ok": "1.0"}]
    assert [p.name for p in seen["curves"]["steppo"]] == ["steppo-full-s0-study.jsonl", "steppo-full-s1-study.jsonl"]
    assert "ppo" not in seen["curves"] and set(seen["missing"]) == {"pilot", "movement", "summary"}


def fake_warm_start(cfg, weight: float):
    """A run folder with constructed questions and a saved warm start (adapter files + report), as SFT leaves it."""
    import torch
    from safetensors.torch import save_file

    from stepsearch_lib import sft

    for name in study_inputs.INPUT_DATA:
        path = cfg.path("data", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": name, "question": "q?"}) + "\n")
    adapter = sft.warm_start_dir(cfg)
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": cfg.model.lora_r}))
    save_file({"lora_A.weight": torch.full((2, 3), weight)}, str(adapter / "adapter_model.safetensors"))
    report = {"settings": sft.warm_start_settings(cfg), "adapter": str(adapter), "after": {"format_ok": 1.0}}
    sft.warm_start_report_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    sft.warm_start_report_path(cfg).write_text(json.dumps(report))
    return adapter


def test_a_fresh_machine_resumes_from_the_committed_inputs(tmp_path):
    """The warm start is committed once with the digests of the constructed questions; a fresh run folder gets the
    warm start back (checked by SHA-256) instead of an hour of SFT, and missing or different questions or a damaged
    commit are refused by name."""
    from safetensors.torch import load_file

    from stepsearch_lib import sft

    inputs = tmp_path / "results" / "inputs"
    first = study.study_config("smoke", {"artifact_root": str(tmp_path / "machine1")}, study.WARM_SEED)
    adapter = fake_warm_start(first, 0.5)
    manifest = study_inputs.publish_inputs(first, inputs)
    committed = json.loads(manifest.read_text())
    assert committed["warm_start"] == adapter.name
    assert set(committed["data_sha256"]) == {"stepsearch_train.jsonl", "stepsearch_dev.jsonl"}
    assert set(committed["sha256"]) == {
        f"warm_start/{adapter.name}/adapter_config.json",
        f"warm_start/{adapter.name}/adapter_model.safetensors",
        f"warm_start/{adapter.name}/report.json",
    }
    assert not (inputs / "data").exists()  # the questions stay out of git: construction remakes them
    other = study.study_config("smoke", {"artifact_root": str(tmp_path / "machine1"), "train.sft_lr": 1.0}, 0)
    fake_warm_start(other, 9.0)
    assert (
        study_inputs.publish_inputs(other, inputs).read_text() == manifest.read_text()
    )  # the first one stays committed

    fresh = study.study_config("smoke", {"artifact_root": str(tmp_path / "machine2")}, study.WARM_SEED)
    with pytest.raises(MissingInputError, match="stepsearch construct --profile smoke"):
        study_inputs.restore_inputs(fresh, inputs)
    for name in study_inputs.INPUT_DATA:  # construction on the fresh machine: the same questions
        fresh.path("data", name).parent.mkdir(parents=True, exist_ok=True)
        fresh.path("data", name).write_text(first.path("data", name).read_text())
    study_inputs.restore_inputs(fresh, inputs)
    restored = sft.warm_start_dir(fresh)
    assert load_file(str(restored / "adapter_model.safetensors"))["lora_A.weight"].tolist() == [[0.5] * 3] * 2
    assert sft.ensure_warm_start(fresh)["after"] == {"format_ok": 1.0}  # reused: no training
    study_inputs.restore_inputs(fresh, inputs)  # idempotent

    fresh.path("data", "stepsearch_train.jsonl").write_text('{"id": "other"}\n')
    with pytest.raises(UsageError, match=r"stepsearch_train.jsonl differs from the questions the study's runs"):
        study_inputs.restore_inputs(fresh, inputs)
    third = study.study_config("smoke", {"artifact_root": str(tmp_path / "machine3")}, study.WARM_SEED)
    for name in study_inputs.INPUT_DATA:
        third.path("data", name).parent.mkdir(parents=True, exist_ok=True)
        third.path("data", name).write_text(first.path("data", name).read_text())
    (inputs / "warm_start" / adapter.name / "adapter_config.json").write_text("damaged\n")
    with pytest.raises(UsageError, match=r"adapter_config.json does not match its SHA-256"):
        study_inputs.restore_inputs(third, inputs)


def test_the_runs_so_far_are_published_finished_or_not(tmp_path):
    """What a session commits before it ends: every study and pilot run's metrics so far, with its update count."""
    overrides = {"artifact_root": str(tmp_path / "runs")}
    metrics = get_config("smoke", overrides).path("metrics")
    write_run(metrics, "steppo-full-s1-study", [0.1, 0.2, 0.3], [0.0, 0.0, 0.01])
    write_run(metrics, "steppo-full-s0-pilot-lr2e-05", [0.1], [0.0])
    out = tmp_path / "results"
    published = study.publish_progress("smoke", ["steppo", "ppo"], [0, 1], [2e-5, 1e-4], out, overrides)
    assert [(p.relative_to(out).as_posix(), n) for p, n in published] == [
        ("metrics/steppo-full-s1-study.jsonl", 3),
        ("pilot/steppo-full-s0-pilot-lr2e-05.jsonl", 1),
    ]
    assert (out / "metrics" / "steppo-full-s1-study.jsonl").read_text() == (
        metrics / "steppo-full-s1-study.jsonl"
    ).read_text()


def test_an_eval_worker_evaluates_only_its_datasets_and_the_last_one_assembles_the_predictions(tmp_path):
    """`run_heldout(datasets=)` is one `--jobs` worker's share: parts of other datasets are neither evaluated nor
    waited for, and the predictions file appears once every part exists, in the profile's dataset order. The run
    folder has no search index, so any evaluation (in the share or outside it) fails by name."""
    overrides = {"artifact_root": str(tmp_path / "runs")}
    cfg = study.study_config("smoke", overrides, study.WARM_SEED)
    adapter = fake_warm_start(cfg, 0.5)
    datasets = [d for d, _ in cfg.data.eval_files]
    first, last = datasets[:-1], datasets[-1]
    part = {d: cfg.path("eval", "study", f"warm-{adapter.name}", f"{d}.jsonl") for d in datasets}
    for d in first:  # what the other workers already wrote
        write_predictions(part[d].parent, d, {f"{d}-q": 1.0})
    out = tmp_path / "results"
    assert study.run_heldout("smoke", [], [], out, overrides, only="warm", datasets=first[:1]) == []
    assert not (out / "predictions" / "warm.jsonl").exists()  # the last dataset's part is still missing
    with pytest.raises(MissingInputError, match="stepsearch index --profile smoke"):  # its share: it evaluates
        study.run_heldout("smoke", [], [], out, overrides, only="warm", datasets=[last])
    write_predictions(part[last].parent, last, {f"{last}-q": 0.0})  # its worker finished
    [target] = study.run_heldout("smoke", [], [], out, overrides, only="warm", datasets=[last])
    assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == [f"{d}-q" for d in datasets]
    assert study.run_heldout("smoke", [], [], out, overrides, datasets=first[:1]) == [target]  # done: skipped
