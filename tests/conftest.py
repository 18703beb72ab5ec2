"""Shared fixtures: the model cache, the real SmolLM2 tokenizer, the shared data root."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Tests never reach a model hub: set before huggingface_hub is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx
import pytest

from stepsearch_lib.config import default_cache_dir, default_data_root
from stepsearch_lib.data import gold_and_sub_paragraphs, load_corpus, load_questions, passage_key
from stepsearch_lib.encoder import load_encoder
from stepsearch_lib.index import build_index
from stepsearch_lib.models import load_tokenizer


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """The persistent converted-model cache (the GGUF is converted once per machine)."""
    return default_cache_dir()


@pytest.fixture(scope="session")
def tokenizer(model_cache):
    return load_tokenizer("tiny-random", model_cache)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_data_root()
    if not (root / "corpus").is_dir():
        pytest.fail(f"the shared data mirror is missing at {root}; set STEPSEARCH_DATA_ROOT")
    return root


@pytest.fixture(scope="session")
def musique_dev(data_root):
    return load_questions(data_root / "musique" / "musique_ans_dev_subset.jsonl", limit=30)


@pytest.fixture(scope="session")
def small_corpus(data_root, musique_dev):
    """The gold paragraphs of 30 real MuSiQue questions plus 600 other real passages."""
    corpus = load_corpus(data_root / "corpus" / "wiki_passages.jsonl")
    wanted = {passage_key(p.title, p.text) for r in musique_dev for p in gold_and_sub_paragraphs(r)}
    gold = [p for p in corpus if passage_key(p.title, p.text) in wanted]
    others = [p for p in corpus if passage_key(p.title, p.text) not in wanted][::60][:600]
    return gold + others


@pytest.fixture(scope="session")
def encoder():
    return load_encoder("all-minilm-l6-v2", device="cpu")


@pytest.fixture(scope="session")
def index_dirs(tmp_path_factory, small_corpus, encoder):
    root = tmp_path_factory.mktemp("index")
    build_index("dense", small_corpus, root / "dense", encoder=encoder, cache_dir=root / "cache")
    build_index("bm25", small_corpus, root / "bm25")
    return root


@pytest.fixture(scope="session")
def stepsearch_records(index_dirs, musique_dev, small_corpus, encoder):
    """Real StepSearch records constructed from the MuSiQue slice with the rule writer."""
    from stepsearch_lib.construct import construct
    from stepsearch_lib.query_writers import RuleWriter
    from stepsearch_lib.retrieval import load_retriever

    retrievers = {"bm25": load_retriever(index_dirs / "bm25")}
    return construct(musique_dev, [RuleWriter()], retrievers, small_corpus, topk=5).records


@pytest.fixture(scope="session")
def protocol_model(tokenizer, stepsearch_records, index_dirs):
    """A tiny random model taught the search protocol by a few masked-loss steps on real demonstrations
    (so rollouts with it search, read forced documents and answer)."""
    import torch

    from stepsearch_lib.demonstrations import build_demonstrations, completion_loss, pad_rows
    from stepsearch_lib.models import build_tiny_model
    from stepsearch_lib.retrieval import load_retriever

    rows = build_demonstrations(
        stepsearch_records[:4], load_retriever(index_dirs / "bm25"), tokenizer, n=4, doc_words=20
    )
    ids, attn, mask = pad_rows(rows, tokenizer.pad_token_id)
    model = build_tiny_model(tokenizer, hidden_size=128, layers=2, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for _ in range(300):  # memorise the demonstrations' protocol
            loss = completion_loss(model, ids, attn, mask)
            if loss.item() < 0.02:
                break
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(index_dir, *extra: str):
    """`python -m stepsearch_lib.server` in a subprocess on a free loopback port: yields its base URL, stops it after."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepsearch_lib.server", "--index", str(index_dir), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("server did not come up in 120 s")
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(index_dirs):
    with running_server(index_dirs / "bm25", "--max-queries", "64") as base:
        yield base


# ----------------------------------------------------------------------------- reliability figures

from hypothesis import settings  # noqa: E402

settings.register_profile("default", max_examples=150, deadline=None)
settings.register_profile("thorough", max_examples=10_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_sessionfinish(session, exitstatus):
    """Merge the reliability counters of this run into runs/reliability/stats.json (per counter, the latest run)."""
    import json

    from reliability_stats import COUNTS

    from stepsearch_lib.config import PROJECT_ROOT
    from stepsearch_lib.fileio import write_json

    if not COUNTS:
        return
    path = PROJECT_ROOT / "runs" / "reliability" / "stats.json"
    stats = json.loads(path.read_text()) if path.is_file() else {}
    stats.update(
        {
            k: {
                "count": v,
                "hypothesis_profile": os.environ.get("HYPOTHESIS_PROFILE", "default"),
                "passed": exitstatus == 0,
            }
            for k, v in COUNTS.items()
        }
    )
    write_json(path, stats)
