"""The committed-notebook hygiene: stripping executed notebooks for the repository."""

import json

from stepsearch_lib.reproduce import notebook_paths, strip_for_commit


def test_strip_removes_run_noise_but_keeps_outputs():
    nb = {
        "metadata": {"papermill": {"duration": 3}},
        "cells": [
            {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "PROFILE = 'cpu'", "outputs": []},
            {
                "cell_type": "code",
                "metadata": {"tags": ["injected-parameters"]},
                "source": "PROFILE = 'smoke'",
                "outputs": [],
            },
            {
                "cell_type": "code",
                "metadata": {"execution": {"t": 1}, "papermill": {"status": "ok"}},
                "source": "x",
                "outputs": [
                    {"output_type": "stream", "name": "stderr", "text": "10%|#"},
                    {
                        "output_type": "display_data",
                        "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "ab"}, "text/plain": "0%|"},
                    },
                    {"output_type": "stream", "name": "stdout", "text": "outputs ok"},
                ],
            },
        ],
    }
    out = strip_for_commit(nb)
    assert "papermill" not in out["metadata"] and len(out["cells"]) == 2
    assert out["cells"][1]["metadata"] == {} and out["cells"][1]["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "outputs ok"}
    ]
    assert nb["cells"][2]["outputs"][0]["name"] == "stderr"  # input untouched


def test_committed_notebooks_are_stripped_and_default_to_cpu():
    for path in notebook_paths():
        nb = json.loads(path.read_text())
        assert "papermill" not in nb["metadata"], path
        assert not any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"]), path
        assert not any("execution" in c["metadata"] for c in nb["cells"]), path
        shown = [o for c in nb["cells"] for o in c.get("outputs", [])]
        assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in shown), path
        params = "".join(nb["cells"][1]["source"])
        assert 'os.environ.get("STEPSEARCH_PROFILE", "cpu")' in params, path


def test_compare_runs_ignores_timings_and_location_but_not_results(tmp_path):
    import json

    from stepsearch_lib.reproduce import compare_runs

    def write(root, f1, seconds, extra=None):
        run = root / "smoke"
        (run / "eval").mkdir(parents=True)
        (run / "eval" / "results.csv").write_text(f"method,model,f1,train_s\nagent,{root}/smoke/ckpt,{f1},{seconds}\n")
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "time/step_s": seconds, "reward/f1": f1}) + "\n")
        (run / "notebooks").mkdir()
        (run / "notebooks" / "x.ipynb").write_text(str(seconds))  # executed notebooks are skipped
        if extra:
            (run / extra).write_bytes(b"x")
        return run

    a = write(tmp_path / "a", 0.5, 1.0)
    assert compare_runs(a, write(tmp_path / "b", 0.5, 9.0)) == []
    assert compare_runs(a, write(tmp_path / "c", 0.6, 1.0)) == ["differs: eval/results.csv", "differs: metrics.jsonl"]
    assert compare_runs(a, write(tmp_path / "d", 0.5, 1.0, "fig.png")) == [
        f"only in {tmp_path / 'd' / 'smoke'}: fig.png"
    ]


def test_the_compare_door_says_whether_two_runs_agree(tmp_path, capsys):
    from stepsearch_lib.reproduce import main

    for name, f1 in (("a", 0.5), ("b", 0.5), ("c", 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.csv").write_text(f"f1,train_s\n{f1},{len(name)}\n")
    assert main(["--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "reproduces" in capsys.readouterr().out
    assert main(["--compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 1
    assert capsys.readouterr().out.strip() == "differs: results.csv"
    assert main(["--compare", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_the_cpu_local_run_is_the_quick_one_unless_full():
    from stepsearch_lib.reproduce import QUICK, local_run_overrides

    for profile, user, full, expected in (
        ("cpu", {}, False, QUICK),
        ("cpu", {"eval.questions_per_dataset": 20}, False, {**QUICK, "eval.questions_per_dataset": 20}),
        ("cpu", {"train.steps": 3}, True, {"train.steps": 3}),
        ("smoke", {}, False, {}),
        ("gpu", {}, False, {}),
    ):
        assert local_run_overrides(profile, user, full) == expected, (profile, user, full)


def test_write_back_is_for_the_profiles_whose_outputs_are_committed(capsys):
    import pytest

    from stepsearch_lib.reproduce import main

    with pytest.raises(SystemExit):
        main(["--profile", "gpu", "--write-back"])
    assert "smoke and cpu" in capsys.readouterr().err
