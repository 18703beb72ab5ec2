"""Data construction: decomposition, query writers, the retrieval filter, StepSearch-format I/O."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from stepsearch_lib.construct import construct, decompose, split_records
from stepsearch_lib.data import load_questions
from stepsearch_lib.decompose import resolve_placeholders
from stepsearch_lib.query_writers import LocalChatWriter, OpenAIWriter, QueryWriter, RuleWriter, parse_queries
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.stepsearch_format import read_stepsearch, write_stepsearch


@pytest.fixture(scope="module")
def musique_train(data_root):
    return {r.id: r for r in load_questions(data_root / "musique" / "musique_ans_train_subset.jsonl")}


def test_placeholders_resolve_on_real_records(musique_train):
    hops = decompose(musique_train["2hop__102789_75372"])
    assert [h.question for h in hops] == ["What country is Tai Chi-tao from?", "how much debt do we have with China"]
    three = next(
        r
        for r in musique_train.values()
        if "Albert, King of #1 >> place of birth" in [s.question for s in r.sub_questions]
    )
    assert decompose(three)[1].question == "What is the place of birth of Albert, King of Sweden?"
    assert decompose(three)[2].question == "In what city did Nicholas I, Lord of Mecklenburg die?"
    with pytest.raises(ValueError, match="#3"):
        resolve_placeholders("who is #3", ["a"])


def test_every_answerable_musique_record_decomposes_without_placeholders(musique_train):
    for rec in musique_train.values():
        if rec.answerable:
            hops = decompose(rec)
            assert hops and all("#" not in h.question and h.paragraph for h in hops), rec.id


def test_2wiki_and_hotpot_decompositions(data_root):
    w = load_questions(data_root / "2wikimultihopqa" / "train_subset_with_qa_pairs.jsonl", limit=1)[0]
    assert [h.answer for h in decompose(w)] == ["Dillon Francis", "October 5, 1987"]
    dev = load_questions(data_root / "2wikimultihopqa" / "dev_subset.jsonl", limit=1)[0]
    assert [(h.question, h.answer, h.paragraph.title) for h in decompose(dev)] == [
        (
            "What is the father of Karl, Prince of Leiningen?",
            "Emich, 5th Prince of Leiningen",
            "Karl, Prince of Leiningen",
        ),
        (
            "What is the date of birth of Emich, 5th Prince of Leiningen?",
            "18 January 1866",
            "Emich, 5th Prince of Leiningen",
        ),
    ]
    hotpot = load_questions(data_root / "hotpotqa" / "hotpot_train_distractor_subset.jsonl")
    for rec in hotpot:
        hops = decompose(rec)
        assert len(hops) == 2 and {h.paragraph for h in hops} == set(rec.gold_paragraphs)
    comp = next(r for r in hotpot if r.type == "comparison")
    assert all(h.question.startswith(h.paragraph.title) for h in decompose(comp))


class ScriptedWriter(QueryWriter):
    """Fixed queries per hop: a known-good query (the gold title) and a known-bad one."""

    name = "scripted"

    def write_batch(self, sub_questions):
        return [["zzqx vvbn unrelated nonsense", q] for q in sub_questions]


def test_filter_keeps_and_drops_a_known_case(index_dirs, musique_dev, small_corpus, encoder):
    retrievers = {
        "dense": load_retriever(index_dirs / "dense", encoder=encoder),
        "bm25": load_retriever(index_dirs / "bm25"),
    }
    rec = next(r for r in musique_dev if r.id.startswith("2hop"))
    res = construct([rec], [ScriptedWriter()], retrievers, small_corpus, topk=3, min_retrievers=2)
    by_query = {(row["hop"], row["query"]): row for row in res.queries}
    assert not by_query[(1, "zzqx vvbn unrelated nonsense")]["kept"]
    assert by_query[(1, decompose(rec)[0].question)]["kept"]
    assert res.counts["questions_in"] == 1 and res.counts["queries_written/scripted"] == 4
    if res.records:  # kept only when every hop survived
        assert res.records[0]["sub_searchs"][0] == [decompose(rec)[0].question]
    else:
        assert res.counts["dropped/hop_without_surviving_query"] == 1


def test_construction_counts_every_stage(index_dirs, musique_dev, small_corpus, encoder):
    retrievers = {
        "dense": load_retriever(index_dirs / "dense", encoder=encoder),
        "bm25": load_retriever(index_dirs / "bm25"),
    }
    res = construct(musique_dev, [RuleWriter()], retrievers, small_corpus, topk=5)
    c = res.counts
    assert (
        c["questions_in"]
        == len(musique_dev)
        == c["questions_decomposed"]
        + sum(v for k, v in c.items() if k.startswith("dropped/") and k != "dropped/hop_without_surviving_query")
    )
    assert (
        c["questions_kept"] == len(res.records) == c["questions_decomposed"] - c["dropped/hop_without_surviving_query"]
    )
    assert c["queries_written/rules"] == len(res.queries) >= 2 * c["hops"]
    assert 0 < c["questions_kept"] and c["hops_kept"] <= c["hops"]
    for rec in res.records:
        assert len(rec["sub_searchs"]) == len(rec["sub_support_docs"]) and all(rec["sub_searchs"])
    train, dev = split_records(res.records, 0.25, seed=0)
    assert len(train) + len(dev) == len(res.records) and split_records(res.records, 0.25, seed=0) == (train, dev)


def test_stepsearch_round_trip_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rec = {
        "id": "2hop__1_2",
        "question": "Q?",
        "final_answer": "A",
        "answer_aliases": ["a"],
        "sub_searchs": [["q1", "q1b"], ["q2"]],
        "sub_support_docs": [{"title": "T1", "paragraph_text": "P1"}, {"title": "T2", "paragraph_text": "P2"}],
    }
    paths = write_stepsearch([rec], tmp_path, "train")
    assert read_stepsearch(paths["jsonl"]) == [rec]
    import datasets

    assert datasets.load_from_disk(str(paths["dataset"]))[0] == rec
    row = {
        "data_source": "musique",
        "prompt": [{"role": "user", "content": "Answer it.\nQuestion: Q?\n"}],
        "reward_model": {
            "style": "rule",
            "ground_truth": {"target": ["A", "a"], "search_keys": [["q1", "q1b"], ["q2"]]},
        },
        "extra_info": {
            "index": 7,
            "support_docs": [{"title": "T1", "paragraph_text": "P1"}, {"title": "T2", "paragraph_text": "P2"}],
        },
    }
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "train.parquet")
    got = read_stepsearch(tmp_path / "train.parquet")[0]
    assert {**got, "id": rec["id"]} == rec and got["id"] == "7"


def test_bad_stepsearch_file_names_the_line(tmp_path):
    bad = tmp_path / "musi_answerable_train.jsonl"
    bad.write_text(
        json.dumps(
            {
                "id": "x",
                "question": "q",
                "final_answer": "a",
                "answer_aliases": [],
                "sub_searchs": "q1",
                "sub_support_docs": [],
            }
        )
        + "\n"
    )
    with pytest.raises(ValueError, match=r"musi_answerable_train.jsonl:1: field 'sub_searchs'"):
        read_stepsearch(bad)


PARSE_CASES = [
    ("1. Dai Jitao\n2. Dai Jitao country", ["Dai Jitao", "Dai Jitao country"], 0),
    ("- a\n- a\n", ["a"], 1),
    ("<search>x</search>", [], 1),
    ("", [], 0),
    ("word " * 40, [], 1),
]


@pytest.mark.parametrize("text,expected,malformed", PARSE_CASES)
def test_parse_queries(text, expected, malformed):
    from collections import Counter

    stats = Counter()
    assert parse_queries(text, stats=stats) == expected and stats["malformed"] == malformed


def test_local_chat_writer_never_crashes_on_a_random_model(tokenizer):
    from stepsearch_lib.models import build_tiny_model

    writer = LocalChatWriter(build_tiny_model(tokenizer), tokenizer, max_new_tokens=12, batch_size=4)
    out = writer.write_batch(["Who founded Citibank?", "When was Citibank founded?", "x"])
    assert len(out) == 3 and all(isinstance(q, list) for q in out)
    assert writer.stats["parsed"] + writer.stats["empty_generations"] + writer.stats["malformed"] >= 1


class _ChatStandIn(BaseHTTPRequestHandler):
    """A local OpenAI-compatible stand-in (no real endpoint is reachable here)."""

    calls: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _ChatStandIn.calls.append((self.path, self.headers.get("authorization"), body))
        question = body["messages"][0]["content"]
        if "FLAKY" in question and sum("FLAKY" in c[2]["messages"][0]["content"] for c in _ChatStandIn.calls) == 1:
            self.send_response(500)
            self.end_headers()
            return
        if "BROKEN" in question:
            payload = {"choices": []}
        else:
            payload = {
                "choices": [
                    {"message": {"role": "assistant", "content": '1. Citibank founding year\n2. "Citibank founded"'}}
                ]
            }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return


def test_openai_writer_against_a_local_stand_in():
    server = HTTPServer(("127.0.0.1", 0), _ChatStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        writer = OpenAIWriter(
            base_url=f"http://127.0.0.1:{server.server_port}/v1", model="gpt-4o", api_key="k", backoff_s=0.01
        )
        out = writer.write_batch(["When was Citibank founded?", "BROKEN", "FLAKY question"])
    finally:
        server.shutdown()
    assert out == [["Citibank founding year", "Citibank founded"], [], ["Citibank founding year", "Citibank founded"]]
    assert writer.stats["malformed"] == 1 and writer.stats["http_500"] == 1
    path, auth, body = _ChatStandIn.calls[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "gpt-4o"
