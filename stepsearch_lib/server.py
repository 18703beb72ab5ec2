"""A retrieval server speaking the Search-R1 / StepSearch ``/retrieve`` API.

    python -m stepsearch_lib.server --index runs/cpu/index/dense [--index runs/cpu/index/bm25] \
        [--host 127.0.0.1] [--port 8000]

``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": bool}`` answers
``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`` (``contents`` is
``title\\ntext``); without ``return_scores`` each row is a list of documents. Two index
folders are fused with reciprocal-rank fusion. What Search-R1's own training client sends is
answered: an empty ``queries`` list (``{"result": []}``), empty query strings (an empty hit list),
thousands of queries per request (up to ``--max-queries``, 4,096), over-long queries (cut to
``--max-query-chars``). Bad requests get a 4xx answer whose body is always ``{"error": ...}``, and
the server keeps serving; it binds 127.0.0.1 unless told otherwise. ``GET /health`` reports the
index metadata.
"""

# No `from __future__ import annotations`: FastAPI must see the request model class itself.

import argparse
import threading
from dataclasses import dataclass

from .cli import door
from .retrieval import Retriever, retriever_from_dirs


@dataclass(frozen=True)
class ServerLimits:
    max_queries: int = 4096
    """Queries per request (Search-R1's training loop sends one request of batch x n_agent queries, e.g. 2,560)."""
    max_topk: int = 100
    """Largest topk."""
    max_query_chars: int = 2000
    """Longer queries are truncated to this many characters (not refused)."""
    max_body_bytes: int = 16_000_000
    """Largest request body, declared or streamed; larger ones get 413."""
    body_timeout_s: float = 30.0
    """A client that has not sent its whole body this long after the last chunk gets 408."""


class _BodyLimit:
    """ASGI middleware: read the whole request body first (at most ``limit`` bytes, each chunk within
    ``timeout_s``), then hand the app a replay of it. Over the limit -> 413; a body shorter than declared
    -> 408 after the timeout. Done outside the app so the answer is ours, not the framework's 500."""

    def __init__(self, app, limit: int, timeout_s: float):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        import asyncio

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, f"request body over {self.limit} bytes")
        chunks, seen, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                return await _send_error(send, 408, f"the request body did not arrive within {self.timeout_s:g} s")
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await _send_error(send, 413, f"request body over {self.limit} bytes")
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnect notices
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


async def _send_error(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(
    retriever: Retriever, default_topk: int = 3, limits: ServerLimits | None = None, meta: dict | None = None
):
    """The FastAPI app serving ``retriever`` (wrapped in the body-limit middleware); ``limits`` None: the defaults."""
    limits = limits or ServerLimits()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, field_validator
    from starlette.exceptions import HTTPException

    class RetrieveRequest(BaseModel):
        queries: list[str]
        topk: int | None = None
        return_scores: bool = False

        @field_validator("queries")
        @classmethod
        def _queries(cls, v: list[str]) -> list[str]:
            # an empty list and empty strings are answered (Search-R1's client sends both); long queries are cut
            if len(v) > limits.max_queries:
                raise ValueError(f"'queries' holds {len(v)} queries; at most {limits.max_queries} per request")
            for i, q in enumerate(v):
                try:
                    q.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"queries[{i}] is not valid Unicode (a lone surrogate)") from None
            return [q[: limits.max_query_chars] for q in v]

        @field_validator("topk")
        @classmethod
        def _topk(cls, v: int | None) -> int | None:
            if v is not None and not 1 <= v <= limits.max_topk:
                raise ValueError(f"'topk' must be between 1 and {limits.max_topk}, got {v}")
            return v

    app = FastAPI(title="StepSearch retrieval server")
    lock = threading.Lock()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "the request body is not valid JSON"}, status_code=400)
        parts = []
        for e in errors:
            loc = ".".join(str(x) for x in e.get("loc", []) if x != "body")
            msg = str(e.get("msg", "invalid")).encode("utf-8", "replace").decode()
            parts.append(f"{loc}: {msg}" if loc else msg)
        return JSONResponse({"error": "; ".join(parts)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):  # 404, 405, ...: the same JSON shape as every error
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health")
    def health():
        return {"status": "ok", "index": meta or {}}

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest):
        k = req.topk or default_topk
        with lock:  # an empty list gets an empty result, empty queries empty hit lists (`Retriever.batch_search`)
            results = retriever.batch_search(req.queries, k)
        rows = []
        for hits in results:
            docs = [{"id": h.passage.id, "contents": h.passage.contents} for h in hits]
            rows.append([{"document": d, "score": h.score} for d, h in zip(docs, hits)] if req.return_scores else docs)
        return {"result": rows}

    return _BodyLimit(app, limits.max_body_bytes, limits.body_timeout_s)


@door
def main(argv: list[str] | None = None) -> int:
    import uvicorn

    ap = argparse.ArgumentParser(
        description="Serve index folders over the Search-R1 /retrieve API.",
        epilog="example: stepsearch server --index runs/cpu/index/dense --index runs/cpu/index/bm25 --port 8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--index", action="append", required=True, help="index folder (repeat for hybrid)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--topk", type=int, default=3, help="topk when a request gives none")
    ap.add_argument("--max-queries", type=int, default=ServerLimits.max_queries)
    ap.add_argument("--max-topk", type=int, default=ServerLimits.max_topk)
    ap.add_argument("--max-query-chars", type=int, default=ServerLimits.max_query_chars, help="longer queries are cut")
    ap.add_argument("--max-body-bytes", type=int, default=ServerLimits.max_body_bytes)
    ap.add_argument("--body-timeout", type=float, default=ServerLimits.body_timeout_s, metavar="SECONDS")
    args = ap.parse_args(argv)
    retriever = retriever_from_dirs(args.index)
    meta = getattr(retriever, "meta", {"kind": "hybrid", "indexes": args.index})
    limits = ServerLimits(
        max_queries=args.max_queries,
        max_topk=args.max_topk,
        max_query_chars=args.max_query_chars,
        max_body_bytes=args.max_body_bytes,
        body_timeout_s=args.body_timeout,
    )
    uvicorn.run(create_app(retriever, args.topk, limits, meta), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
