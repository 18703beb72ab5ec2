"""A retrieval server speaking the Search-R1 / StepSearch ``/retrieve`` API.

    python -m stepsearch_lib.server --index runs/cpu/index/dense [--index runs/cpu/index/bm25] \
        [--host 127.0.0.1] [--port 8000]

``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": bool}`` answers
``{"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}`` (``contents`` is
``title\\ntext``); without ``return_scores`` each row is a list of documents. Two index
folders are fused with reciprocal-rank fusion. Bad requests get a 4xx answer with a
message (``{"error": ...}``) and the server keeps serving; it binds 127.0.0.1 unless told
otherwise. ``GET /health`` reports the index metadata.
"""

# No `from __future__ import annotations`: FastAPI must see the request model class itself.

import argparse
import threading
from dataclasses import dataclass

from .retrieval import Retriever, retriever_from_dirs


@dataclass(frozen=True)
class ServerLimits:
    max_queries: int = 512
    """Queries per request."""
    max_topk: int = 100
    """Largest topk."""
    max_query_chars: int = 2000
    """Longest query, in characters."""
    max_body_bytes: int = 2_000_000
    """Largest request body; larger ones get 413."""


class _BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds ``limit`` bytes (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, f"request body over {self.limit} bytes")
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _send_error(send, 413, f"request body over {self.limit} bytes")


class _TooLarge(Exception):
    pass


async def _send_error(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(retriever: Retriever, default_topk: int = 3, limits: ServerLimits = ServerLimits(), meta: dict | None = None):
    """The FastAPI app serving ``retriever``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, field_validator

    class RetrieveRequest(BaseModel):
        queries: list[str]
        topk: int | None = None
        return_scores: bool = False

        @field_validator("queries")
        @classmethod
        def _queries(cls, v: list[str]) -> list[str]:
            if not v:
                raise ValueError("'queries' must hold at least one query")
            if len(v) > limits.max_queries:
                raise ValueError(f"'queries' holds {len(v)} queries; at most {limits.max_queries} per request")
            for i, q in enumerate(v):
                if not q.strip():
                    raise ValueError(f"queries[{i}] is empty")
                if len(q) > limits.max_query_chars:
                    raise ValueError(f"queries[{i}] has {len(q)} characters; at most {limits.max_query_chars}")
            return v

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
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else e.get("msg", "invalid"))
        return JSONResponse({"error": "; ".join(parts)}, status_code=422)

    @app.get("/health")
    def health():
        return {"status": "ok", "index": meta or {}}

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest):
        k = req.topk or default_topk
        with lock:
            results = retriever.batch_search(req.queries, k)
        rows = []
        for hits in results:
            docs = [{"id": h.passage.id, "contents": h.passage.contents} for h in hits]
            rows.append([{"document": d, "score": h.score} for d, h in zip(docs, hits)] if req.return_scores else docs)
        return {"result": rows}

    return _BodyLimit(app, limits.max_body_bytes)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    ap = argparse.ArgumentParser(description="Serve index folders over the Search-R1 /retrieve API.")
    ap.add_argument("--index", action="append", required=True, help="index folder (repeat for hybrid)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--topk", type=int, default=3, help="topk when a request gives none")
    ap.add_argument("--max-queries", type=int, default=ServerLimits.max_queries)
    ap.add_argument("--max-topk", type=int, default=ServerLimits.max_topk)
    args = ap.parse_args(argv)
    retriever = retriever_from_dirs(args.index)
    meta = getattr(retriever, "meta", {"kind": "hybrid", "indexes": args.index})
    limits = ServerLimits(max_queries=args.max_queries, max_topk=args.max_topk)
    uvicorn.run(create_app(retriever, args.topk, limits, meta), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
