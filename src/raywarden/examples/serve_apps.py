"""Weight-free Ray Serve applications for trying the Serve listener (docs/serve.md) and for its tests.

- ``echo``: answers JSON describing the call it received (method, paths, headers, body size); with
  ``?think=S``, after S seconds, in one piece.
- ``stream``: a generator behind ``StreamingResponse``: ``?n=5&delay=0.2`` chunks, ``&sse=1`` for
  server-sent events, as an LLM streams tokens.
- ``ws``: a FastAPI app with ``GET /hello`` and a WebSocket at ``/ws`` that echoes text.
- ``gate``: calls that stay open until released: ``?hold=NAME`` answers a first line at once, then waits until
  a call with ``?open=NAME`` (at most ``MAX_HOLD_S``), as a slow model call keeps its connection; for seeing
  concurrency limits without guessing how long a call takes.

Deploy them with ``import_path: raywarden.examples.serve_apps:echo`` (or ``:stream``, ``:ws``, ``:gate``).
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

MAX_CHUNKS = 10_000
MAX_HOLD_S = 300.0
MAX_THINK_S = 30.0


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Echo:
    async def __call__(self, request: Request) -> JSONResponse:
        body = await request.body()
        # ``?think=S``: answer after S seconds (at most MAX_THINK_S), in one piece, as a completion that is not
        # streamed.
        await asyncio.sleep(min(float(request.query_params.get("think", "0") or 0), MAX_THINK_S))
        return JSONResponse(
            {
                "method": request.method,
                "path": request.scope["path"],
                "root_path": request.scope.get("root_path"),
                "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
                "query": request.scope.get("query_string", b"").decode("latin-1"),
                "headers": dict(request.headers.items()),
                "body_len": len(body),
            }
        )


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Stream:
    async def __call__(self, request: Request) -> StreamingResponse:
        n = min(int(request.query_params.get("n", "5")), MAX_CHUNKS)
        delay = min(float(request.query_params.get("delay", "0.2")), 10.0)
        sse = request.query_params.get("sse") == "1"

        async def chunks() -> AsyncIterator[str]:
            for i in range(n):
                if sse:
                    yield f"data: {json.dumps({'i': i, 't': time.time()})}\n\n"
                else:
                    yield f"chunk {i} {time.time():.3f}\n"
                await asyncio.sleep(delay)

        return StreamingResponse(chunks(), media_type="text/event-stream" if sse else "text/plain")


@serve.deployment(ray_actor_options={"num_cpus": 0}, num_replicas=1, max_ongoing_requests=64)
class Gate:
    def __init__(self) -> None:
        # One replica holds every gate, so a call that opens one reaches the calls that wait on it.
        self._gates: dict[str, asyncio.Event] = {}

    async def __call__(self, request: Request) -> Response:
        opened = request.query_params.get("open")
        if opened is not None:
            self._gates.setdefault(opened, asyncio.Event()).set()
            return JSONResponse({"opened": opened})
        gate = self._gates.setdefault(request.query_params.get("hold", ""), asyncio.Event())

        async def held() -> AsyncIterator[str]:
            yield "held\n"
            try:
                await asyncio.wait_for(gate.wait(), MAX_HOLD_S)
            except asyncio.TimeoutError:
                yield "timed out\n"
                return
            yield "released\n"

        return StreamingResponse(held(), media_type="text/plain")


api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Sockets:
    @api.get("/hello")
    def hello(self) -> dict[str, str]:
        return {"hello": "world"}

    @api.websocket("/ws")
    async def echo_socket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            async for text in websocket.iter_text():
                await websocket.send_text("echo:" + text)
        except WebSocketDisconnect:
            return


# Serve's decorator turns each class into a Deployment, which mypy cannot see.
echo = Echo.bind()  # type: ignore[attr-defined]
stream = Stream.bind()  # type: ignore[attr-defined]
ws = Sockets.bind()  # type: ignore[attr-defined]
gate = Gate.bind()  # type: ignore[attr-defined]
