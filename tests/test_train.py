"""The training loop on the smoke profile: metrics, checkpoints, exact resume, the three algorithms."""

import json

import pytest
from reliability_stats import record

from stepsearch_lib.checkpoint import latest_checkpoint
from stepsearch_lib.config import get_config
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.train import train

KEYS = {
    "reward/answer_f1",
    "reward/search_key",
    "reward/info_gain",
    "reward/redundancy",
    "rollout/num_searches",
    "rollout/response_len",
    "losses/policy",
    "losses/approx_kl",
    "losses/clipfrac",
    "time/step_s",
}


def _cfg(root, model_cache):
    return get_config(
        "smoke",
        overrides={
            "artifact_root": str(root),
            "model.cache_dir": str(model_cache),
            "train.questions_per_step": 2,
            "rollout.max_new_tokens": 16,
            "rollout.max_turns": 1,
            "ppo.minibatch_size": 2,
        },
    )


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_time(row):
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def test_resume_matches_an_uninterrupted_run(tmp_path, model_cache, stepsearch_records, index_dirs):
    retriever = load_retriever(index_dirs / "bm25")
    full = _lines(
        train(_cfg(tmp_path / "a", model_cache), "steppo", steps=2, records=stepsearch_records, retriever=retriever)
    )
    cfg_b = _cfg(tmp_path / "b", model_cache)
    train(cfg_b, "steppo", steps=2, records=stepsearch_records, retriever=retriever, stop_after=1)
    assert latest_checkpoint(cfg_b.path("checkpoints", "steppo-full-s0")).name == "step-000001"
    resumed = _lines(train(cfg_b, "steppo", steps=2, records=stepsearch_records, retriever=retriever))
    assert [r["step"] for r in resumed] == [1, 2]
    assert _without_time(resumed[1]) == _without_time(full[1])
    assert KEYS <= set(full[0]) and "losses/value" in full[0]


@pytest.mark.parametrize("algo,run", [("ppo", "ppo-global_only-s0"), ("grpo", "grpo-full-s0")])
def test_baselines_run_through_the_same_entry(tmp_path, model_cache, stepsearch_records, index_dirs, algo, run):
    cfg = _cfg(tmp_path, model_cache)
    path = train(cfg, algo, steps=1, records=stepsearch_records, retriever=load_retriever(index_dirs / "bm25"))
    assert path.name == f"{run}.jsonl" and len(_lines(path)) == 1
    assert (latest_checkpoint(cfg.path("checkpoints", run)) / "actor_adapter.safetensors").is_file()


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, model_cache, stepsearch_records, index_dirs, monkeypatch
):
    import stepsearch_lib.train as T

    real = T.steppo_update
    calls = {"n": 0}

    def faulty(*args, **kwargs):  # fault injection: the second update reports a NaN loss
        calls["n"] += 1
        out = real(*args, **kwargs)
        return {**out, "losses/policy": float("nan")} if calls["n"] == 2 else out

    monkeypatch.setattr(T, "steppo_update", faulty)
    cfg = _cfg(tmp_path, model_cache)
    with pytest.raises(T.NonFiniteLossError, match="step 2"):
        train(cfg, "steppo", steps=3, records=stepsearch_records, retriever=load_retriever(index_dirs / "bm25"))
    assert latest_checkpoint(cfg.path("checkpoints", "steppo-full-s0")).name == "step-000001"
    assert [r["step"] for r in _lines(cfg.path("metrics", "steppo-full-s0.jsonl"))] == [1]
    record("training: NaN losses injected, run stopped with the last good checkpoint kept")


@pytest.mark.parametrize("mode", ["merge", "continue"])
def test_rl_starts_from_a_saved_warm_start(tmp_path, model_cache, tokenizer, mode):
    """merge: the warm start is in the base weights, so the reference (adapter disabled) is the
    warm-started policy and RL trains a fresh adapter; continue: RL trains the saved adapter itself."""
    import torch

    from stepsearch_lib.models import LoraSpec, add_lora, build_tiny_model
    from stepsearch_lib.train import build_models

    sft = add_lora(build_tiny_model(tokenizer, seed=0), LoraSpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for n, p in sft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    sft.save_pretrained(str(tmp_path / "sft"))
    cfg = get_config(
        "smoke",
        overrides={
            "model.cache_dir": str(model_cache),
            "model.lora_r": 4,
            "model.lora_alpha": 8,
            "model.lora_dropout": 0.0,
            "train.init_adapter": str(tmp_path / "sft"),
            "train.init_adapter_mode": mode,
            "train.gradient_checkpointing": False,
        },
    )
    actor, critic, tok, opt_a, opt_c = build_models(cfg)
    ids = torch.tensor([tok("Who directed Shanghai 13? <search> Shanghai 13 </search>")["input_ids"]])
    with torch.no_grad():
        want = sft(ids).logits
        assert torch.allclose(actor(ids).logits, want, atol=1e-4)  # RL starts at the warm-started policy
        with actor.disable_adapter():
            ref = actor(ids).logits
    trained = {n for g in opt_a.param_groups for p in g["params"] for n, q in actor.named_parameters() if q is p}
    if mode == "merge":
        assert torch.allclose(ref, want, atol=1e-4)
        assert all(".default." in n for n in trained)
    else:
        assert not torch.allclose(ref, want, atol=1e-3)  # reference = the model before the warm start
    with pytest.raises(ValueError, match="init_adapter_mode"):
        build_models(get_config("smoke", overrides={"train.init_adapter_mode": "other"}))


# ----------------------------------------------------------------------------- run hygiene


def test_a_resume_with_another_setting_is_refused_naming_the_field(
    tmp_path, model_cache, stepsearch_records, index_dirs
):
    """Before: only algo / reward / model fields were compared, so a new learning rate resumed silently with
    the old optimizer state. Now every training field is, and the refusal names it."""
    from stepsearch_lib.train import SettingsMismatchError

    retriever = load_retriever(index_dirs / "bm25")
    cfg = _cfg(tmp_path, model_cache)
    train(cfg, "steppo", steps=2, records=stepsearch_records, retriever=retriever, stop_after=1)
    other = get_config("smoke", {**_overrides(tmp_path, model_cache), "ppo.actor_lr": 3e-4, "rollout.top_p": 0.9})
    for resume in (True, False):  # --no-resume must not take over the other run's folder either
        with pytest.raises(
            SettingsMismatchError,
            match=r"ppo\.actor_lr \(checkpoint 0\.0001, now 0\.0003\).*"
            r"rollout\.top_p",
        ):
            train(other, "steppo", steps=2, records=stepsearch_records, retriever=retriever, resume=resume)
    before = _lines(cfg.path("metrics", "steppo-full-s0.jsonl"))
    path = train(other, "steppo", steps=1, records=stepsearch_records, retriever=retriever, tag="lr3e-4")
    assert path.name == "steppo-full-s0-lr3e-4.jsonl" and len(_lines(path)) == 1
    assert _lines(cfg.path("metrics", "steppo-full-s0.jsonl")) == before  # the first run's files are untouched
    assert latest_checkpoint(cfg.path("checkpoints", "steppo-full-s0")).name == "step-000001"


def test_seeds_get_their_own_run_folders(tmp_path, model_cache, stepsearch_records, index_dirs):
    retriever = load_retriever(index_dirs / "bm25")
    for seed in (0, 1):
        cfg = get_config("smoke", _overrides(tmp_path, model_cache), seed=seed)
        train(cfg, "ppo", steps=1, records=stepsearch_records, retriever=retriever)
    assert sorted(p.name for p in cfg.path("checkpoints").iterdir()) == ["ppo-global_only-s0", "ppo-global_only-s1"]


def test_the_metrics_log_the_real_f1_the_return_spread_and_the_critic(
    tmp_path, model_cache, stepsearch_records, index_dirs
):
    path = train(
        _cfg(tmp_path, model_cache),
        "steppo",
        steps=1,
        records=stepsearch_records,
        retriever=load_retriever(index_dirs / "bm25"),
    )
    row = _lines(path)[0]
    assert {"reward/answer", "rollout/return_std", "critic/explained_variance", "lr/actor", "lr/critic"} <= set(row)
    assert row["reward/answer_f1"] >= 0.0  # the real F1, never the gate's -1


def _overrides(root, model_cache):
    return {
        "artifact_root": str(root),
        "model.cache_dir": str(model_cache),
        "train.questions_per_step": 2,
        "rollout.max_new_tokens": 16,
        "rollout.max_turns": 1,
        "ppo.minibatch_size": 2,
    }


def test_rl_checkpoints_record_their_warm_start_and_evaluation_loads_that_one(
    tmp_path, model_cache, tokenizer, stepsearch_records, index_dirs
):
    """Warm starts are keyed by their settings (seed included): a second seed's warm start lives beside the
    first, and a run trained from the first is evaluated on the first, whatever seed the evaluator uses."""
    import torch

    from stepsearch_lib.evaluate import load_model_for_eval
    from stepsearch_lib.models import LoraSpec, add_lora, build_tiny_model
    from stepsearch_lib.sft import warm_start_dir

    over = {**_overrides(tmp_path, model_cache), "train.init_adapter": "sft"}
    cfg0, cfg1 = get_config("smoke", over, seed=0), get_config("smoke", over, seed=1)
    assert warm_start_dir(cfg0) != warm_start_dir(cfg1)
    assert warm_start_dir(cfg0) != warm_start_dir(get_config("smoke", {**over, "train.sft_lr": 1e-3}, seed=0))
    for cfg, scale in ((cfg0, 0.05), (cfg1, -0.05)):  # two different warm starts, saved where `sft` trains them
        sft = add_lora(build_tiny_model(tokenizer, seed=0), LoraSpec(r=32, alpha=64, dropout=0.05))
        with torch.no_grad():
            for n, p in sft.named_parameters():
                if "lora_B" in n:
                    p.fill_(scale)
        sft.save_pretrained(str(warm_start_dir(cfg)))
    train(cfg0, "steppo", steps=1, records=stepsearch_records, retriever=load_retriever(index_dirs / "bm25"))
    state = json.loads((latest_checkpoint(cfg0.path("checkpoints", "steppo-full-s0")) / "state.json").read_text())
    assert state["settings"]["warm_start"] == f"checkpoints/{warm_start_dir(cfg0).name}"
    ids = torch.tensor([tokenizer("Who directed Shanghai 13?")["input_ids"]])
    with torch.no_grad():
        a = load_model_for_eval(str(cfg0.path("checkpoints", "steppo-full-s0")), cfg0)[0](ids).logits
        b = load_model_for_eval(str(cfg1.path("checkpoints", "steppo-full-s0")), cfg1)[0](ids).logits
    torch.testing.assert_close(a, b)  # the evaluator's seed does not pick the warm start


def test_every_cli_takes_profile_seed_and_set_the_same_way(monkeypatch, tmp_path):
    """--algo no longer overrides --set train.algo silently; sft and evaluate take --set and --seed too."""
    import stepsearch_lib.evaluate as E
    import stepsearch_lib.sft as S
    import stepsearch_lib.train as T

    seen = {}
    monkeypatch.setattr(
        T, "train", lambda cfg, algo, *a, **k: seen.update(train=(cfg, algo, k)) or tmp_path / "m.jsonl"
    )
    monkeypatch.setattr(T, "init_world", lambda cpu: T.World())
    T.main(["--profile", "smoke", "--seed", "3", "--set", "train.algo=ppo", "--run-name", "x", "--stop-after", "4"])
    cfg, algo, kwargs = seen["train"]
    assert (cfg.train.algo, algo, cfg.seed, kwargs["tag"], kwargs["stop_after"]) == ("ppo", None, 3, "x", 4)
    monkeypatch.setattr(
        S,
        "warm_start",
        lambda cfg: seen.update(sft=cfg)
        or {
            "before": {"format_ok": 0, "searched": 0, "answer_f1": 0},
            "after": {"format_ok": 1, "searched": 1, "answer_f1": 1},
            "adapter": "a",
            "train_s": 1.0,
        },
    )
    S.main(["--profile", "smoke", "--seed", "2", "--set", "train.sft_lr=0.001"])
    assert (seen["sft"].seed, seen["sft"].train.sft_lr) == (2, 1e-3)
    for main in (T.main, S.main, E.main):
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        assert exit_info.value.code == 0
