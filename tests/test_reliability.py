"""Reliability and security: a SIGKILLed run resumes exactly, checkpoints survive a crash mid-save,
the server survives abuse and concurrency, failed writes leave nothing behind, and the source has
no unsafe deserialisation or untimed HTTP calls. Counts feed docs/reliability.md."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from reliability_stats import record

from stepsearch_lib.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from stepsearch_lib.config import PROJECT_ROOT, get_config
from stepsearch_lib.fileio import write_jsonl
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.stepsearch_format import write_stepsearch

SMALL = {
    "retrieval.kind": "bm25",
    "train.questions_per_step": 2,
    "rollout.max_new_tokens": 16,
    "rollout.max_turns": 1,
    "ppo.minibatch_size": 2,
    "train.save_every": 1,
}


def _run_dir(root, model_cache, records, index_dirs):
    cfg = get_config("smoke", {"artifact_root": str(root), "model.cache_dir": str(model_cache), **SMALL})
    write_stepsearch(records, cfg.path("data"), "stepsearch_train")
    cfg.path("index").mkdir(parents=True)
    os.symlink(index_dirs / "bm25", cfg.path("index", "bm25"))
    return cfg


def _cli(cfg, steps, model_cache):
    sets = [
        a
        for k, v in {"artifact_root": cfg.artifact_root, "model.cache_dir": str(model_cache), **SMALL}.items()
        for a in ("--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}")
    ]
    return [sys.executable, "-m", "stepsearch_lib.train", "--profile", "smoke", "--steps", str(steps), *sets]


def _metrics(cfg):
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith(("time/", "memory/"))}
        for line in cfg.path("metrics", "steppo-full-s0.jsonl").read_text().splitlines()
    ]


def test_a_sigkilled_run_resumes_to_the_uninterrupted_metrics(tmp_path, model_cache, stepsearch_records, index_dirs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = _run_dir(tmp_path / "full", model_cache, stepsearch_records, index_dirs)
    subprocess.run(_cli(full, 3, model_cache), check=True, capture_output=True, env=env, timeout=600)
    killed = _run_dir(tmp_path / "killed", model_cache, stepsearch_records, index_dirs)
    proc = subprocess.Popen(_cli(killed, 3, model_cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    pointer = killed.path("checkpoints", "steppo-full-s0", "latest")
    deadline = time.monotonic() + 600
    while not pointer.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run: during step 2's rollout, update or save
    proc.wait()
    record("training: runs killed with SIGKILL and resumed")
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert latest_checkpoint(killed.path("checkpoints", "steppo-full-s0")) is not None
    subprocess.run(_cli(killed, 3, model_cache), check=True, capture_output=True, env=env, timeout=600)
    assert _metrics(killed) == _metrics(full)


def test_a_crash_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch

    import stepsearch_lib.checkpoint as C

    actor, critic = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    opt_a, opt_c = torch.optim.AdamW(actor.parameters()), torch.optim.AdamW(critic.parameters())
    save_checkpoint(tmp_path, 1, actor, critic, opt_a, opt_c)
    saved = actor.weight.detach().clone()  # (w + 1) - 1 is not w in float32: compare with the saved copy
    with torch.no_grad():
        actor.weight.add_(1.0)
    real = C.save_file
    writes = {"n": 0}

    def crash_on_second_file(tensors, path, *a, **k):
        writes["n"] += 1
        if writes["n"] == 2:
            Path(path).write_bytes(b"half a file")  # the process dies in the middle of step 2's folder
            raise KeyboardInterrupt("injected crash during save")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(C, "save_file", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, actor, critic, opt_a, opt_c)
    record("checkpoints: crashes injected during a save")
    assert latest_checkpoint(tmp_path).name == "step-000001"
    assert not (tmp_path / "step-000002").exists()
    fresh, fresh_c = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    state = load_checkpoint(
        latest_checkpoint(tmp_path),
        fresh,
        fresh_c,
        torch.optim.AdamW(fresh.parameters()),
        torch.optim.AdamW(fresh_c.parameters()),
    )
    assert state["step"] == 1 and torch.equal(fresh.weight, saved)


def test_a_failed_write_leaves_no_partial_file(tmp_path):
    def rows():
        yield {"a": 1}
        raise RuntimeError("injected failure while writing")

    with pytest.raises(RuntimeError):
        write_jsonl(tmp_path / "out.jsonl", rows())
    record("artifacts: writes failed on purpose")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- server


def test_abusive_requests_get_4xx_and_the_server_keeps_serving(server):
    cases = [
        ({"queries": ["q"] * 10_000}, {413, 422}),
        ({"queries": ["q"], "topk": 0}, {422}),
        ({"queries": ["q"], "topk": 10**9}, {422}),
        ({"queries": [None]}, {422}),
        ({"queries": [""]}, {200}),
    ]
    for payload, statuses in cases:
        assert httpx.post(f"{server}/retrieve", json=payload, timeout=30).status_code in statuses
    for body in (b"\x00\xff\xfe", b"[1, 2", b"null", "é".encode("latin-1")):
        assert httpx.post(
            f"{server}/retrieve", content=body, headers={"content-type": "application/json"}, timeout=30
        ).status_code in (400, 422)
    assert httpx.post(f"{server}/retrieve", content=b"x" * 17_000_000, timeout=30).status_code == 413
    record("server: abusive requests", len(cases) + 5)
    assert httpx.post(f"{server}/retrieve", json={"queries": ["ok"]}, timeout=30).status_code == 200


def test_slow_clients_do_not_block_others(server):
    host, port = server.removeprefix("http://").split(":")
    stalled = []
    for _ in range(4):  # half-sent requests that never finish (slowloris)
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(
            b'POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\ncontent-type: application/json\r\n\r\n{"q'
        )
        stalled.append(s)
    t0 = time.monotonic()
    r = httpx.post(f"{server}/retrieve", json={"queries": ["Eiffel Tower"]}, timeout=30)
    assert r.status_code == 200 and time.monotonic() - t0 < 10
    record("server: stalled slow clients held open", len(stalled))
    for s in stalled:
        s.close()


def test_a_thousand_requests_from_eight_concurrent_clients(server, index_dirs):
    local = load_retriever(index_dirs / "bm25")
    queries = [
        "Eiffel Tower",
        "Chang Cheh film",
        "debt of China",
        "Taos County",
        "Shanghai 13 director",
        "MuSiQue question",
        "river in Germany",
        "Nobel prize physics",
    ]
    expected = {q: [h.passage.id for h in hs] for q, hs in zip(queries, local.batch_search(queries, 3))}
    errors, served = [], [0]
    lock = threading.Lock()

    def client(i):
        with httpx.Client(timeout=30) as c:
            for j in range(125):
                q = queries[(i + j) % len(queries)]
                body = c.post(f"{server}/retrieve", json={"queries": [q], "topk": 3}).json()
                got = [d["id"] for d in body["result"][0]]
                with lock:
                    served[0] += 1
                    if got != expected[q]:
                        errors.append((q, got))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record("server: concurrent requests answered", served[0])
    assert served[0] == 1000 and errors == []


def test_server_binds_loopback_unless_told_otherwise():
    from stepsearch_lib import server as S

    src = Path(S.__file__).read_text()
    assert 'ap.add_argument("--host", default="127.0.0.1"' in src


# ----------------------------------------------------------------------------- security scan

UNSAFE = [
    (r"\bpickle\.loads?\(", "pickle loading"),
    (r"(?<![\w.])eval\(", "eval"),
    (r"(?<![\w.])exec\(", "exec"),
    (r"allow_pickle\s*=\s*True", "numpy pickle"),
    (r"torch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only"),
    (r"trust_remote_code\s*=\s*True", "remote code"),
]


def test_no_unsafe_deserialisation_or_code_execution_in_the_source():
    files = sorted((PROJECT_ROOT / "stepsearch_lib").glob("*.py")) + sorted((PROJECT_ROOT / "bench").glob("*.py"))
    hits = [(f.name, what) for f in files for pattern, what in UNSAFE if re.search(pattern, f.read_text())]
    record("security: source files scanned", len(files))
    assert hits == []


def test_every_http_call_has_a_timeout():
    files = sorted((PROJECT_ROOT / "stepsearch_lib").glob("*.py")) + sorted((PROJECT_ROOT / "bench").glob("*.py"))
    calls = [
        (f.name, m.group(0))
        for f in files
        for m in re.finditer(r"httpx\.(Client|AsyncClient|get|post|request)\([^)]*\)", f.read_text(), re.S)
    ]
    assert calls and all("timeout" in c for _, c in calls), calls


# ----------------------------------------------------------------------------- data loaders

LOADER_FILES = {
    "musique": "musique/musique_ans_dev_subset.jsonl",
    "hotpotqa": "hotpotqa/hotpot_dev_distractor_subset.jsonl",
    "2wiki": "2wikimultihopqa/dev_subset.jsonl",
    "flashrag": "bamboogle/test.jsonl",
    "corpus": "corpus/wiki_passages.jsonl",
}
FAULTS = ["empty", "truncated", "wrong_type", "missing_field", "duplicate_id", "non_utf8"]


def _first_lines(path: Path, n: int = 2) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [next(f) for _ in range(n)]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("fmt", list(LOADER_FILES))
def test_every_loader_names_file_and_line_for_every_fault(tmp_path, data_root, fmt, fault):
    from stepsearch_lib.data import DataFormatError, load_corpus, load_questions

    lines = _first_lines(data_root / LOADER_FILES[fmt])
    field = "text" if fmt == "corpus" else "question"
    second = json.loads(lines[1])
    if fault == "empty":
        body, line = b"", None
    elif fault == "truncated":
        body, line = (lines[0] + lines[1][: len(lines[1]) // 2]).encode(), 2
    elif fault == "wrong_type":
        body, line = (lines[0] + json.dumps({**second, field: 3}) + "\n").encode(), 2
    elif fault == "missing_field":
        body, line = (lines[0] + json.dumps({k: v for k, v in second.items() if k != field}) + "\n").encode(), 2
    elif fault == "duplicate_id":
        body, line = (lines[0] + lines[0]).encode(), 2
    else:
        body, line = lines[0].encode() + lines[1].encode().replace(b'"', b'"\xe9', 1), 2
    path = tmp_path / f"{fmt}-{fault}.jsonl"
    path.write_bytes(body)
    load = load_corpus if fmt == "corpus" else load_questions
    with pytest.raises(DataFormatError) as err:
        load(path)
    record("data: faulty files rejected with a clear error")
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    if line is not None:
        assert f"{path}:{line}:" in msg, msg


def test_atomic_writes_get_normal_permissions(tmp_path):
    from stepsearch_lib.fileio import atomic_path, write_json

    old = os.umask(0o022)
    os.umask(old)
    path = write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "d", is_dir=True) as d:
        (d / "f").write_text("x")
    assert (path.stat().st_mode & 0o777) == 0o666 & ~old
    assert ((tmp_path / "d").stat().st_mode & 0o777) == 0o777 & ~old
