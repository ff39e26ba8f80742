"""build_app: the FastAPI app, its lifespan, and the middleware around every route.

The lifespan starts the server at once (so /healthz answers while the model
loads) and loads the model in the background exactly once: checkpoint, vocab
and vocoder from the model folder with hub access off, then one warm-up
synthesis through the same queue requests use. Only then does /readyz say 200.
On SIGTERM the server drains: /readyz and new /v1 requests get 503 while the
requests already running finish, then it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tts_inference import __version__
from tts_inference.engine.base import Engine, SynthesisParams, SynthesisRequest
from tts_inference.metrics import ServerMetrics
from tts_inference.protocol import error_payload
from tts_inference.queue import BatchQueue, DeadlineExceeded, QueueFull
from tts_inference.serving import BadRequest, Defaults, SpeechService, VoiceStore

log = logging.getLogger("tts_inference.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServerSettings:
    model_dir: Path
    cache_dir: Path | None = None
    device: str | None = None
    dtype: str = "auto"
    attn_backend: str = "auto"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    max_input_chars: int = 4096
    max_body_bytes: int = 1_000_000
    request_timeout: float = 300.0
    drain_grace: float = 30.0
    nfe_step: int = 32
    cfg_strength: float = 2.0
    api_key: str | None = None
    model_name: str = "f5-tts"


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    engine: Engine | None = None
    queue: BatchQueue | None = None
    service: SpeechService | None = None
    ready: bool = False
    draining: bool = False
    failed: str | None = None
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    loader: asyncio.Task[None] | None = None
    on_failure: Callable[[str], None] | None = None

    def readiness(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"model failed to load: {self.failed}"
        if self.draining:
            return False, "draining: the server is shutting down"
        if not self.ready:
            return False, "loading: the model is loading or warming up"
        return True, "ready"


def default_engine(settings: ServerSettings) -> Engine:
    """The F5-TTS engine; imported here so nothing else pulls torch in."""
    from tts_inference.engine.f5 import F5Engine

    return F5Engine(
        settings.model_dir,
        device=settings.device,
        dtype=settings.dtype,
        attn_backend=settings.attn_backend,
        max_batch=settings.max_batch,
    )


def error_response(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        type_ = "authentication_error"
    elif status == 429:
        type_ = "rate_limit_error"
    return JSONResponse(
        error_payload(message, type_=type_, param=param), status_code=status, headers=headers
    )


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Pure ASGI middleware for /v1 routes: drain, API key, body size, in-flight count, metrics."""

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
                length = headers.get("content-length")
                if length and length.isdigit() and int(length) > settings.max_body_bytes:
                    status_box[0] = 413
                    await _send_json(
                        send,
                        413,
                        error_payload(
                            f"request body is {length} bytes; the limit is {settings.max_body_bytes}"
                        ),
                    )
                    return
                state.inflight += 1
                state.idle.clear()
                try:
                    await self.app(scope, receive, send_wrapper)
                finally:
                    state.inflight -= 1
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


async def _load(state: ServerState, engine_factory: Callable[[ServerSettings], Engine]) -> None:
    settings, metrics = state.settings, state.metrics
    try:
        started = time.monotonic()
        engine = await asyncio.to_thread(engine_factory, settings)
        await asyncio.to_thread(engine.load)
        metrics.load_seconds.set(time.monotonic() - started)
        state.engine = engine
        info = {k: str(v) for k, v in engine.info().items()}
        metrics.info.info({"version": __version__, **info})
        if str(engine.device).startswith("cuda"):
            metrics.track_gpu_memory(_cuda_memory)
        queue = BatchQueue(
            engine,
            metrics,
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        queue.start()
        state.queue = queue
        voices = VoiceStore(settings.cache_dir / "voices" if settings.cache_dir else None)
        defaults = Defaults(
            settings.nfe_step,
            settings.cfg_strength,
            settings.max_input_chars,
            settings.request_timeout,
        )
        state.service = SpeechService(engine, queue, voices, metrics, defaults)
        started = time.monotonic()
        warm = SynthesisRequest(
            "Warming up the model.", voices.get("default"), SynthesisParams(nfe_step=2, seed=0)
        )
        await queue.synthesize(warm)
        metrics.warmup_seconds.set(time.monotonic() - started)
        state.ready = True
        metrics.ready.set(1)
        log.info(
            "ready: model loaded and warmed up (%s)", ", ".join(f"{k}={v}" for k, v in info.items())
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        log.error("the model failed to load: %s", message)
        state.failed = message
        if state.on_failure:
            state.on_failure(message)


def _cuda_memory() -> float:
    import torch

    return float(torch.cuda.memory_allocated())


def build_app(
    settings: ServerSettings,
    engine_factory: Callable[[ServerSettings], Engine] = default_engine,
    *,
    on_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    state = ServerState(settings, ServerMetrics(), on_failure=on_failure)
    state.idle.set()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loader = asyncio.create_task(_load(state, engine_factory), name="model-loader")
        try:
            yield
        finally:
            state.ready = False
            state.metrics.ready.set(0)
            state.loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await state.loader
            if state.queue is not None:
                await state.queue.stop()
            if state.engine is not None:
                await asyncio.to_thread(state.engine.unload)

    app = FastAPI(title="tts-inference", version=__version__, lifespan=lifespan)
    app.state.tts = state

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            return error_response(
                400,
                f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}",
            )
        message = first.get("msg", "invalid request")
        return error_response(400, f"{param}: {message}" if param else message, param=param)

    @app.exception_handler(BadRequest)
    async def on_bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return error_response(exc.status, str(exc), param=exc.param)

    @app.exception_handler(QueueFull)
    async def on_queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(429, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(DeadlineExceeded)
    async def on_deadline(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        return error_response(504, f"{exc}; the server is overloaded, retry later")

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return error_response(500, f"synthesis failed: {type(exc).__name__}: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    from tts_inference.api_router import attach_router

    attach_router(app)
    app.add_middleware(Guard, state=state)
    return app
