"""Evaluation: metrics, bootstrap intervals, the three methods on real questions, the CLI, the profile matrix."""

import json

import pytest

from stepsearch_lib.config import get_config
from stepsearch_lib.evaluate import bootstrap_ci, evaluate, main, parse_answer, single_shot_prompts
from stepsearch_lib.fileio import read_csv
from stepsearch_lib.retrieval import load_retriever


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<answer> Paris </answer>", "Paris"),
        ("I think <answer>a</answer> no wait <answer> b </answer>", "b"),
        ("\n\n  Paris, France\nmore text", "Paris, France"),
        ("", ""),
        ("<answer> unclosed", "<answer> unclosed"),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    small = bootstrap_ci([0.0, 1.0] * 10, n_samples=2000, seed=1)
    large = bootstrap_ci([0.0, 1.0] * 500, n_samples=2000, seed=1)
    assert small[1] < 0.5 < small[2] and large[1] < 0.5 < large[2]
    assert (large[2] - large[1]) < (small[2] - small[1]) / 3
    assert bootstrap_ci([0.3, 0.9], n_samples=100, seed=5) == bootstrap_ci([0.3, 0.9], n_samples=100, seed=5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_rag_prompt_carries_the_documents_retrieved_on_the_question(tokenizer, musique_dev, index_dirs):
    retriever = load_retriever(index_dirs / "bm25")
    q = musique_dev[0].question
    [prompt] = single_shot_prompts("rag", [q], tokenizer, retriever, topk=2, doc_words=10)
    titles = [h.passage.title for h in retriever.search(q, 2)]
    assert all(f"(Title: {t})" in prompt for t in titles) and q in prompt
    [naive] = single_shot_prompts("naive", [q], tokenizer)
    assert "Title:" not in naive and q in naive
    with pytest.raises(ValueError, match="retriever"):
        single_shot_prompts("rag", [q], tokenizer)


@pytest.mark.parametrize("method", ["naive", "rag", "agent"])
def test_each_method_writes_scored_predictions(method, tmp_path, protocol_model, tokenizer, musique_dev, index_dirs):
    cfg = get_config("smoke", {"rollout.max_new_tokens": 48, "retrieval.kind": "bm25"})
    records = musique_dev[:4]
    summary = evaluate(
        method,
        protocol_model,
        tokenizer,
        records,
        load_retriever(index_dirs / "bm25"),
        cfg,
        tmp_path,
        "protocol-model",
        "musique",
    )
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in records]
    assert all(set(r) >= {"question", "prediction", "golds", "searches", "em", "f1"} for r in rows)
    assert all(0 <= r["em"] <= r["f1"] + 1e-9 <= 1 + 1e-9 for r in rows)
    assert summary["f1"] == pytest.approx(sum(r["f1"] for r in rows) / 4)
    assert summary["f1_lo"] <= summary["f1"] <= summary["f1_hi"]
    assert read_csv(tmp_path / "results.csv")[0]["method"] == method
    if method == "agent":  # the protocol model really searches during evaluation
        assert sum(r["searches"] for r in rows) > 0


def test_cli_scores_any_supported_file(tmp_path, data_root, index_dirs, model_cache, capsys):
    out = tmp_path / "out"
    main(
        [
            "--method",
            "rag",
            "--model",
            "tiny-random",
            "--dataset",
            str(data_root / "bamboogle" / "test.jsonl"),
            "--index",
            str(index_dirs / "bm25"),
            "--out",
            str(out),
            "--limit",
            "3",
            "--profile",
            "smoke",
            "--set",
            f"model.cache_dir={model_cache}",
            "--set",
            "rollout.max_new_tokens=8",
        ]
    )
    assert json.loads(capsys.readouterr().out)["n"] == 3
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    with pytest.raises(SystemExit):
        main(["--method", "agent", "--model", "tiny-random", "--dataset", "x.jsonl", "--out", str(out)])


def test_a_training_checkpoint_loads_for_evaluation(tmp_path, model_cache, stepsearch_records, index_dirs):
    import torch
    from safetensors.torch import load_file

    from stepsearch_lib.checkpoint import latest_checkpoint
    from stepsearch_lib.evaluate import load_model_for_eval
    from stepsearch_lib.train import train

    cfg = get_config(
        "smoke",
        {
            "artifact_root": str(tmp_path),
            "model.cache_dir": str(model_cache),
            "train.questions_per_step": 2,
            "rollout.max_new_tokens": 8,
            "rollout.max_turns": 1,
            "ppo.minibatch_size": 2,
            "ppo.actor_lr": 1e-2,
        },
    )
    train(cfg, "steppo", steps=1, records=stepsearch_records, retriever=load_retriever(index_dirs / "bm25"))
    ckpt = cfg.path("checkpoints", "steppo-full-s0")
    saved = load_file(str(latest_checkpoint(ckpt) / "actor_adapter.safetensors"))
    model, _ = load_model_for_eval(str(ckpt), cfg)
    params = dict(model.named_parameters())
    policy = {k: v for k, v in saved.items() if ".critic." not in k}  # the shared critic's adapter stays behind
    assert policy and all(torch.equal(params[k], v) for k, v in policy.items())
    assert len(policy) < len(saved) and not any(".critic." in k for k in params)  # a policy, not a trainer
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B.default" in k)  # trained, not the zero init


def test_profile_matrix_includes_existing_checkpoints_and_reuses_finished_cells(
    tmp_path, model_cache, musique_dev, index_dirs, monkeypatch
):
    import stepsearch_lib.eval_suite as suite

    cfg = get_config(
        "smoke",
        {
            "artifact_root": str(tmp_path),
            "model.cache_dir": str(model_cache),
            "rollout.max_new_tokens": 8,
            "rollout.max_turns": 1,
            "eval.methods": ["naive", "rag"],
        },
    )
    assert [e.label for e in suite.evaluation_plan(cfg)] == ["naive generation", "single-shot RAG"]
    fake_run = cfg.path("checkpoints", "ppo-global_only-s0")
    fake_run.mkdir(parents=True)
    (fake_run / "latest").write_text("step-000001")
    assert suite.evaluation_plan(cfg)[-1].label == "PPO"
    (fake_run / "latest").unlink()
    datasets = {"musique": musique_dev[:2], "other": musique_dev[2:5]}
    retriever = load_retriever(index_dirs / "bm25")
    path = suite.run_evaluation(cfg, datasets, retriever)
    rows = read_csv(path)
    assert [(r["label"], r["dataset"], r["n"]) for r in rows] == [
        ("naive generation", "musique", "2"),
        ("naive generation", "other", "3"),
        ("single-shot RAG", "musique", "2"),
        ("single-shot RAG", "other", "3"),
    ]

    def boom(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(suite, "evaluate", boom)
    assert read_csv(suite.run_evaluation(cfg, datasets, retriever)) == rows
    with pytest.raises(ValueError, match="eval.methods"):
        suite.evaluation_plan(get_config("smoke", {"eval.methods": ["oracle"]}))
