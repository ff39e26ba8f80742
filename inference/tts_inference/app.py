"""build_app: the FastAPI app, its lifespan, and the middleware around every route.

The lifespan starts the server at once (so /healthz answers while the model
loads) and loads the model in the background exactly once: checkpoint, vocab
and vocoder from the model folder with hub access off, then one warm-up
synthesis through the same queue requests use. Only then does /readyz say 200.
On SIGTERM the server drains: /readyz and new /v1 requests get 503 while the
requests already running finish, then it exits. Jobs still queued or running
then are interrupted: their records say so (``retryable``), and a POST with
the same Idempotency-Key runs them again on any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from tts_inference import __version__
from tts_inference.api_router import attach_router
from tts_inference.engine.base import SynthesisParams, SynthesisRequest
from tts_inference.errors import install_error_handlers
from tts_inference.metrics import ServerMetrics
from tts_inference.protocol import error_payload
from tts_inference.runtime import (
    EngineFactory,
    TranscriberFactory,
    default_engine,
    default_transcriber,
    open_runtime,
)
from tts_inference.settings import ServerSettings
from tts_inference.state import ServerState

log = logging.getLogger("tts_inference.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Room for the multipart framing and the other fields of a voice upload.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class Guard:
    """Pure ASGI middleware for /v1 routes: drain, API key, body size, in-flight count, metrics.

    The body limit is checked on Content-Length and again on the bytes actually
    received (a chunked upload has no length). Voice uploads get their own,
    larger limit.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        started = time.monotonic()
        status_box = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = int(message["status"])
            await send(message)

        state = self.state
        settings = state.settings
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        try:
            if path.startswith("/v1/"):
                if settings.api_key:
                    given = headers.get("authorization", "")
                    token = given[7:] if given.lower().startswith("bearer ") else ""
                    if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                        status_box[0] = 401
                        await _send_json(
                            send,
                            401,
                            error_payload(
                                "missing or wrong API key: send Authorization: Bearer <key>",
                                type_="authentication_error",
                            ),
                        )
                        return
                ok, why = state.readiness()
                if not ok:
                    status_box[0] = 503
                    await _send_json(
                        send, 503, error_payload(why, type_="server_error"), {"Retry-After": "5"}
                    )
                    return
                limit = settings.max_body_bytes
                if path == "/v1/voices" and scope.get("method") == "POST":
                    limit = settings.max_upload_bytes + UPLOAD_OVERHEAD_BYTES
                length = headers.get("content-length")
                if length and length.isdigit() and int(length) > limit:
                    status_box[0] = 413
                    await _send_json(
                        send,
                        413,
                        error_payload(f"request body is {length} bytes; the limit is {limit}"),
                    )
                    return
                received = [0]

                async def receive_limited() -> Message:
                    message = await receive()
                    if message["type"] == "http.request":
                        received[0] += len(message.get("body", b""))
                        if received[0] > limit:
                            raise BodyTooLarge(limit)
                    return message

                state.inflight += 1
                state.metrics.inflight.set(state.inflight)
                state.idle.clear()
                try:
                    await self.app(scope, receive_limited, send_wrapper)
                finally:
                    state.inflight -= 1
                    state.metrics.inflight.set(state.inflight)
                    if state.inflight == 0:
                        state.idle.set()
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or (
                "/v1/other" if path.startswith("/v1/") else "other"
            )
            if label != "/metrics":
                state.metrics.requests.labels(label, str(status_box[0])).inc()
                state.metrics.request_seconds.labels(label).observe(time.monotonic() - started)


async def _load(
    state: ServerState,
    stack: contextlib.AsyncExitStack,
    engine_factory: EngineFactory,
    transcriber_factory: TranscriberFactory,
) -> None:
    """Build the runtime, load the model, warm it up through the queue; then ready."""
    metrics = state.metrics
    try:
        runtime = await stack.enter_async_context(
            open_runtime(state.settings, metrics, transcriber_factory)
        )
        state.runtime = runtime
        service = await runtime.load(engine_factory)
        started = time.monotonic()
        warm = SynthesisRequest(
            "Warming up the model.",
            runtime.voices.get("default"),
            SynthesisParams(nfe_step=2, seed=0),
        )
        await service.queue.synthesize(warm)
        metrics.warmup_seconds.set(time.monotonic() - started)
        state.ready = True
        metrics.ready.set(1)
        log.info("ready: model loaded and warmed up")
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        log.error("the model failed to load: %s", message)
        state.failed = message
        if state.on_failure:
            state.on_failure(message)


def build_app(
    settings: ServerSettings,
    engine_factory: EngineFactory = default_engine,
    *,
    on_failure: Callable[[str], None] | None = None,
    transcriber_factory: TranscriberFactory = default_transcriber,
) -> FastAPI:
    state = ServerState(settings, ServerMetrics(), on_failure=on_failure)
    state.idle.set()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            state.loader = asyncio.create_task(
                _load(state, stack, engine_factory, transcriber_factory), name="model-loader"
            )
            try:
                yield
            finally:
                state.ready = False
                state.metrics.ready.set(0)
                state.loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state.loader

    app = FastAPI(title="tts-inference", version=__version__, lifespan=lifespan)
    app.state.tts = state

    install_error_handlers(app)
    attach_router(app)
    app.add_middleware(Guard, state=state)
    return app
