"""Profiles, overrides, docstrings on every field, no side effects."""

import ast
import inspect
import json

import pytest

from stepsearch_lib import config as C


def test_every_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(C))
    missing = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    if not (
                        isinstance(nxt, ast.Expr)
                        and isinstance(nxt.value, ast.Constant)
                        and isinstance(nxt.value.value, str)
                    ):
                        missing.append(f"{node.name}.{stmt.target.id}")
    assert not missing, missing


@pytest.mark.parametrize("profile", list(C.PROFILES))
def test_profiles_build_and_serialise(profile):
    cfg = C.get_config(profile)
    assert cfg.profile == profile and cfg.run_dir.name == profile
    json.dumps(C.to_dict(cfg))


def test_profile_values():
    assert C.get_config("smoke").model.policy == "tiny-random"
    assert C.get_config("cpu").model.policy == "smollm2-135m-instruct"
    gpu = C.get_config("gpu")
    assert gpu.model.load_in_4bit and gpu.model.lora_r > 0 and gpu.model.policy == "Qwen/Qwen2.5-3B-Instruct"


def test_released_recipe_defaults():
    cfg = C.Config()
    assert (cfg.reward.search_key_weight, cfg.reward.step_scale) == (0.618, 0.6)
    assert (cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.clip_ratio, cfg.ppo.value_clip) == (1.0, 1.0, 0.2, 0.5)
    assert (cfg.ppo.kl_beta, cfg.ppo.entropy_coef) == (0.001, 0.001)
    assert (cfg.retrieval.topk, cfg.rollout.max_turns) == (3, 5)


OVERRIDE_CASES = [
    ({"rollout.max_turns": 3}, lambda c: c.rollout.max_turns == 3),
    ({"max_turns": 3}, lambda c: c.rollout.max_turns == 3),
    ({"seed": 5}, lambda c: c.seed == 5),
    ({"ppo.kl_beta": 0}, lambda c: c.ppo.kl_beta == 0.0 and isinstance(c.ppo.kl_beta, float)),
    ({"eval.methods": ["naive"]}, lambda c: c.eval.methods == ("naive",)),
]


@pytest.mark.parametrize("overrides,check", OVERRIDE_CASES)
def test_overrides(overrides, check):
    assert check(C.get_config("smoke", overrides=overrides))


BAD_OVERRIDES = [
    ({"rollout.nope": 1}, KeyError, "unknown config field 'rollout.nope'"),
    ({"nosection.x": 1}, KeyError, "unknown config section"),
    ({"bogus": 1}, KeyError, "unknown config field 'bogus'"),
    ({"rollout.max_turns": "3"}, TypeError, "'rollout.max_turns' expects an int"),
    ({"model.load_in_4bit": 1}, TypeError, "expects a bool"),
]


@pytest.mark.parametrize("overrides,exc,msg", BAD_OVERRIDES)
def test_bad_overrides_name_the_field(overrides, exc, msg):
    with pytest.raises(exc, match=msg):
        C.get_config("smoke", overrides=overrides)


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile 'tpu'"):
        C.get_config("tpu")


def test_paths_derive_from_one_root_without_side_effects(tmp_path):
    cfg = C.get_config("smoke", artifact_root=str(tmp_path / "art"))
    assert cfg.path("checkpoints", "steppo-full") == tmp_path / "art" / "smoke" / "checkpoints" / "steppo-full"
    assert cfg.path("metrics").parent == cfg.run_dir
    assert not (tmp_path / "art").exists()
    with pytest.raises(ValueError, match="unknown run-folder kind"):
        cfg.path("weights")


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(C.DATA_ROOT_ENV, str(tmp_path))
    assert C.get_config("cpu").data_root == tmp_path.resolve()
    assert C.get_config("cpu", overrides={"data.data_root": "/x"}).data_file("a/b.jsonl") == C.Path("/x/a/b.jsonl")
