"""The retrieval server, started for real with uvicorn on 127.0.0.1, and the Remote client."""

import httpx
import pytest
from conftest import free_port, running_server

from stepsearch_lib.retrieval import RemoteRetrievalError, RemoteRetriever, load_retriever


def test_retrieve_has_the_search_r1_shape(server, index_dirs):
    body = httpx.post(
        f"{server}/retrieve",
        json={"queries": ["Eiffel Tower", "Chang Cheh film"], "topk": 3, "return_scores": True},
        timeout=30,
    ).json()
    assert set(body) == {"result"} and len(body["result"]) == 2
    for row in body["result"]:
        assert len(row) == 3
        for item in row:
            assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
            assert "\n" in item["document"]["contents"]
    plain = httpx.post(f"{server}/retrieve", json={"queries": ["Eiffel Tower"], "topk": 2}, timeout=30).json()
    assert set(plain["result"][0][0]) == {"id", "contents"}


def test_remote_retriever_matches_local(server, index_dirs):
    local = load_retriever(index_dirs / "bm25")
    remote = RemoteRetriever(f"{server}/retrieve", timeout_s=30)
    queries = ["Who directed Shanghai 13?", "debt of China", "Taos County New Mexico"]
    for lo, re_ in zip(local.batch_search(queries, 5), remote.batch_search(queries, 5)):
        assert [h.passage for h in lo] == [h.passage for h in re_]
        assert [round(h.score, 4) for h in lo] == [round(h.score, 4) for h in re_]
    with pytest.raises(RemoteRetrievalError, match="refused the request \\(422\\)"):
        remote.batch_search(["x"], 0)


BAD = [
    ({"queries": ["q"] * 65}, 422, "at most 64"),  # this server runs with --max-queries 64
    ({"queries": ["q"], "topk": 0}, 422, "between 1 and 100"),
    ({"queries": ["q"], "topk": 10_000}, 422, "between 1 and 100"),
    ({"queries": "not a list"}, 422, "queries"),
    ({"topk": 3}, 422, "queries"),
    ({"queries": [None]}, 422, "queries.0"),
]


@pytest.mark.parametrize("payload,status,message", BAD)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, payload, status, message):
    r = httpx.post(f"{server}/retrieve", json=payload, timeout=30)
    assert r.status_code == status and message in r.json()["error"]
    assert httpx.post(f"{server}/retrieve", json={"queries": ["ok"]}, timeout=30).status_code == 200


def test_bad_json_and_oversized_body(server):
    r = httpx.post(f"{server}/retrieve", content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    big = b'{"queries": ["' + b"a" * 17_000_000 + b'"]}'
    r = httpx.post(f"{server}/retrieve", content=big, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert httpx.post(f"{server}/retrieve", json={"queries": ["ok"]}, timeout=30).status_code == 200


def test_remote_retries_then_fails_clearly():
    port = free_port()  # nothing listens there
    remote = RemoteRetriever(f"http://127.0.0.1:{port}/retrieve", timeout_s=2, retries=2, backoff_s=0.01)
    with pytest.raises(RemoteRetrievalError, match="failed after 3 attempts"):
        remote.search("q", 3)


# ----------------------------------------------------------------------------- Search-R1's client


class SearchR1StyleClient:
    """Our own code that handles requests and responses the way Search-R1's training loop does
    (search_r1/llm_agent/generation.py): one POST per turn with every sample's query, ``.json()["result"]``
    read without looking at the status, each document's ``contents`` split into title (first line) and text."""

    def __init__(self, url: str, topk: int = 3):
        self.url, self.topk = url, topk

    def batch_search(self, queries: list[str]) -> list[str]:
        payload = {"queries": queries, "topk": self.topk, "return_scores": True}
        results = httpx.post(self.url, json=payload, timeout=120).json()["result"]  # no status check, as there
        return [self.passages_to_string(r) for r in results]

    @staticmethod
    def passages_to_string(result: list[dict]) -> str:
        out = ""
        for i, item in enumerate(result):
            title, _, text = item["document"]["contents"].partition("\n")
            out += f"Doc {i + 1}(Title: {title}) {text}\n"
        return out


@pytest.fixture(scope="module")
def search_r1_server(index_dirs):
    """A server with the default limits (what a Search-R1 run meets) and a short body timeout."""
    with running_server(index_dirs / "bm25", "--body-timeout", "2") as base:
        yield base


CLIENT_CASES = [
    # id, queries, expected number of results, which results must be empty
    ("no sample searched this turn", [], 0, set()),
    ("an empty query from <search></search>", ["", "Eiffel Tower", "   "], 3, {0, 2}),
    ("2,560 queries in one request", ["Eiffel Tower", "debt of China"] * 1280, 2560, set()),
    ("a query over 2,000 characters", ["Eiffel Tower " * 400], 1, set()),
]


@pytest.mark.parametrize("case,queries,n,empty", CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES])
def test_search_r1_client_gets_an_answer_for_what_its_training_loop_sends(search_r1_server, case, queries, n, empty):
    client = SearchR1StyleClient(f"{search_r1_server}/retrieve")
    out = client.batch_search(queries)
    assert len(out) == n
    for i, text in enumerate(out[:4]):
        assert (text == "") == (i in empty)
        if text:
            assert text.startswith("Doc 1(Title: ") and text.count("\nDoc ") == 2  # three documents


def test_long_queries_are_cut_not_refused(search_r1_server):
    long = "Eiffel Tower " * 400
    r = httpx.post(f"{search_r1_server}/retrieve", json={"queries": [long, long[:2000]]}, timeout=60)
    assert r.status_code == 200
    assert r.json()["result"][0] == r.json()["result"][1]  # the same as its first 2,000 characters


def _raw(base: str, payload: bytes, headers: dict | None = None):
    return httpx.post(
        f"{base}/retrieve", content=payload, headers={"content-type": "application/json", **(headers or {})}, timeout=30
    )


def test_every_error_body_is_json_with_an_error_field(search_r1_server):
    cases = [
        httpx.get(f"{search_r1_server}/nowhere", timeout=30),  # 404 (FastAPI's default is {"detail": ...})
        httpx.get(f"{search_r1_server}/retrieve", timeout=30),  # 405
        _raw(search_r1_server, b'{"queries": ["\\ud800"]}'),  # a lone surrogate in a query
        _raw(search_r1_server, b'{"queries": ["a\\udc00b", "ok"]}'),
        _raw(search_r1_server, b"{not json"),
        httpx.post(f"{search_r1_server}/retrieve", json={"queries": ["q"] * 5000}, timeout=30),
    ]
    for r in cases:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/json") and set(r.json()) == {"error"}, r.text[:200]
    assert "lone surrogate" in cases[2].json()["error"] and "queries[0]" in cases[2].json()["error"]
    assert httpx.post(f"{search_r1_server}/retrieve", json={"queries": ["ok"]}, timeout=30).status_code == 200


def test_a_streamed_body_over_the_cap_gets_413(search_r1_server):
    def chunks():  # no content-length: only the bytes that arrive can tell
        yield b'{"queries": ["'
        for _ in range(17):
            yield b"a" * 1_000_000
        yield b'"]}'

    r = httpx.post(
        f"{search_r1_server}/retrieve", content=chunks(), headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413 and "over 16000000 bytes" in r.json()["error"]
    assert httpx.post(f"{search_r1_server}/retrieve", json={"queries": ["ok"]}, timeout=30).status_code == 200


def test_a_body_shorter_than_declared_times_out(search_r1_server):
    import socket
    import time

    host, port = search_r1_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(
            b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            b'{"queries": ["Eiff'
        )
        t0 = time.monotonic()
        reply = s.recv(4096).decode()
        waited = time.monotonic() - t0
        while '"error"' not in reply:  # the body may come in a second packet
            more = s.recv(4096).decode()
            if not more:
                break
            reply += more
    assert reply.startswith("HTTP/1.1 408") and '"error"' in reply and 1.5 < waited < 15
