"""Every stage is a door that works from a fresh clone: `stepsearch <stage>` (and `python -m stepsearch_lib.<module>`),
the same flags, `--help` with an example, and a missing input named with the command that produces it -- never a
traceback."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from stepsearch_lib.__main__ import STAGES

ROOT = Path(__file__).resolve().parents[1]


def stepsearch(*args, root: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    overrides = [] if root is None else ["--set", f"artifact_root={root}"]
    return subprocess.run(
        [sys.executable, "-m", "stepsearch_lib", *args, *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_the_console_entry_point_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"stepsearch": "stepsearch_lib.__main__:main"}


def test_stepsearch_without_a_stage_lists_the_stages_in_order():
    out = subprocess.run([sys.executable, "-m", "stepsearch_lib"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(STAGES)
    bad = subprocess.run([sys.executable, "-m", "stepsearch_lib", "trian"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "unknown stage 'trian'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_answers_help_with_an_example(stage):
    out = stepsearch(stage, "--help")
    assert out.returncode == 0, out.stderr
    assert "example" in out.stdout
    if stage not in ("data", "server"):  # fetch has its own --data-root; the server serves index folders
        assert "--profile" in out.stdout and "--seed" in out.stdout and "--set" in out.stdout


@pytest.mark.parametrize(
    "stage, producer",
    [
        ("sft", "stepsearch construct --profile smoke"),
        ("train", "stepsearch construct --profile smoke"),
    ],
)
def test_a_stage_without_its_inputs_names_the_command_that_makes_them(stage, producer, tmp_path):
    out = stepsearch(stage, "--profile", "smoke", root=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "stepsearch_train.jsonl is missing" in error[0] and f"`{producer}`" in error[0]


def test_evaluate_names_a_missing_question_file(tmp_path):
    out = stepsearch(
        "evaluate",
        "--profile",
        "smoke",
        "--method",
        "naive",
        "--model",
        "tiny-random",
        "--dataset",
        str(tmp_path / "nope.jsonl"),
        "--out",
        str(tmp_path / "eval"),
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "nope.jsonl is missing" in out.stderr


@pytest.mark.slow
def test_construct_then_train_from_a_fresh_artifact_root(tmp_path):
    """The README's order on the smoke profile: construct (builds the indexes, says so), sft, train."""
    made = stepsearch("construct", "--profile", "smoke", root=tmp_path, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "building the smoke profile's indexes first" in made.stderr
    assert (tmp_path / "smoke" / "data" / "stepsearch_train.jsonl").is_file()
    warm = stepsearch("sft", "--profile", "smoke", root=tmp_path, timeout=900)
    assert warm.returncode == 0, warm.stderr[-3000:]
    run = stepsearch("train", "--profile", "smoke", "--steps", "1", root=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "metrics:" in run.stdout
