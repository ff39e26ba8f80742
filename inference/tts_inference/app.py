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
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tts_inference import __version__
from tts_inference.engine.base import Engine, SynthesisParams, SynthesisRequest
from tts_inference.errors import ApiError, error_status, error_type
from tts_inference.jobs import JobManager, JobSettings
from tts_inference.metrics import ServerMetrics
from tts_inference.model_folder import CONFIG_NAME, known_names
from tts_inference.objects import ObjectStore, S3Uri, bucket_client, parse_uri
from tts_inference.protocol import error_payload
from tts_inference.queue import BatchQueue
from tts_inference.serving import Defaults, SpeechService
from tts_inference.voices import Transcriber, VoiceLimits, VoiceStore

log = logging.getLogger("tts_inference.app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Room for the multipart framing and the other fields of a voice upload.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServerSettings:
    model_dir: Path
    cache_dir: Path | None = None
    device: str | None = None
    dtype: str = "auto"
    attn_backend: str = "auto"
    max_batch: int | None = None  # None: the engine's own (8 on CUDA, 1 on a CPU)
    concurrent_batches: int | None = None
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
    # Voices and jobs (the bucket)
    voices_uri: str | None = None
    jobs_uri: str | None = None
    allowed_buckets: tuple[str, ...] = ()
    asr_model_dir: Path | None = None
    max_upload_bytes: int = 10 * 1000 * 1000
    max_voice_seconds: float = 300.0
    max_running_jobs: int = 2
    max_pending_jobs: int = 256
    max_job_chars: int = 2_000_000
    s3_max_attempts: int = 8
    upload_part_bytes: int = 8 * 1024 * 1024
    upload_attempts: int = 3
    retry_backoff: float = 1.0
    job_heartbeat_seconds: float = 10.0
    # alias -> voice; None: OpenAI's voice names speak with the built-in voice.
    voice_aliases: Mapping[str, str] | None = None

    def records_uri(self) -> S3Uri | None:
        """Where job records live: --jobs-uri, else jobs/ beside the voices prefix."""
        if self.jobs_uri:
            return parse_uri(self.jobs_uri, "--jobs-uri")
        if not self.voices_uri:
            return None
        voices = parse_uri(self.voices_uri, "--voices-uri")
        parent = voices.prefix.rstrip("/").rpartition("/")[0]
        return S3Uri(voices.bucket, f"{parent}/jobs/" if parent else "jobs/")

    def buckets(self) -> tuple[str, ...]:
        """Buckets jobs may read text from and write output to (the voices bucket by default)."""
        if self.allowed_buckets:
            return self.allowed_buckets
        return (parse_uri(self.voices_uri, "--voices-uri").bucket,) if self.voices_uri else ()


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics
    engine: Engine | None = None
    queue: BatchQueue | None = None
    service: SpeechService | None = None
    jobs: JobManager | None = None
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


def model_dir_problem(model_dir: Path, cache_dir: Path | None) -> str | None:
    """Before a process loads the engine: what is wrong with --model-dir, or None. Also puts
    a flash_attn the init container installed into the cache on sys.path (never pip here)."""
    if not (model_dir / CONFIG_NAME).exists():
        return (
            f"{model_dir / CONFIG_NAME} not found: --model-dir must be a synced model folder "
            f"(tts-inference publish writes {CONFIG_NAME} into a revision of {known_names()} "
            "mirrored from the hub; publish a new revision with it)"
        )
    if cache_dir is not None:
        from tts_inference.flash_attn import use_installed

        use_installed(cache_dir)
    return None


def default_engine(settings: ServerSettings) -> Engine:
    """The F5-TTS engine; imported here so nothing else pulls torch in."""
    from tts_inference.engine.f5 import F5Engine

    return F5Engine(
        settings.model_dir,
        device=settings.device,
        dtype=settings.dtype,
        attn_backend=settings.attn_backend,
        max_batch=settings.max_batch,
        concurrent_batches=settings.concurrent_batches,
    )


def default_transcriber(settings: ServerSettings) -> Transcriber | None:
    """Whisper from the cache when one is there (loaded on first use), else None: no ASR."""
    from tts_inference.engine.asr import WhisperTranscriber, find_asr_model

    folder = find_asr_model(settings.cache_dir, settings.asr_model_dir)
    if folder is None:
        return None
    log.info("ASR model for voice uploads without text: %s (loaded on first use)", folder)
    return WhisperTranscriber(folder, settings.device)


def error_response(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_payload(message, type_=error_type(status), param=param),
        status_code=status,
        headers=headers,
    )


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
                state.idle.clear()
                try:
                    await self.app(scope, receive_limited, send_wrapper)
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


def _voices_and_objects(
    settings: ServerSettings,
    metrics: ServerMetrics,
    transcriber: Transcriber | None,
    scratch: Path,
) -> tuple[VoiceStore, ObjectStore | None]:
    remote = parse_uri(settings.voices_uri, "--voices-uri") if settings.voices_uri else None
    objects = None
    if remote is not None or settings.buckets():
        attempts = settings.s3_max_attempts
        objects = ObjectStore(
            lambda: bucket_client(attempts),
            part_bytes=settings.upload_part_bytes,
            on_upload=lambda what, n: metrics.upload_bytes.labels(what).inc(n),
        )
    cache = settings.cache_dir or (scratch if remote is not None else None)
    voices = VoiceStore(
        cache / "voices" if cache else None,
        remote=remote,
        objects=objects,
        metrics=metrics,
        transcriber=transcriber,
        limits=VoiceLimits(
            max_upload_bytes=settings.max_upload_bytes, max_seconds=settings.max_voice_seconds
        ),
        aliases=settings.voice_aliases,
    )
    return voices, objects


async def _load(
    state: ServerState,
    engine_factory: Callable[[ServerSettings], Engine],
    transcriber_factory: Callable[[ServerSettings], Transcriber | None],
    scratch: Path,
) -> None:
    settings, metrics = state.settings, state.metrics
    try:
        started = time.monotonic()
        engine = await asyncio.to_thread(engine_factory, settings)
        await asyncio.to_thread(engine.load)
        metrics.load_seconds.set(time.monotonic() - started)
        await asyncio.to_thread(metrics.track_cache, settings.model_dir, settings.cache_dir)
        state.engine = engine
        info = {k: str(v) for k, v in engine.info().items()}
        metrics.info.info({"version": __version__, **info})
        if str(engine.device).startswith("cuda"):
            metrics.track_gpu_memory(_cuda_memory)
        max_batch = settings.max_batch or engine.max_batch
        queue = BatchQueue(
            engine,
            metrics,
            max_batch=max_batch,
            max_wait=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        queue.start()
        state.queue = queue
        transcriber = await asyncio.to_thread(transcriber_factory, settings)
        voices, objects = _voices_and_objects(settings, metrics, transcriber, scratch)
        defaults = Defaults(
            settings.nfe_step,
            settings.cfg_strength,
            settings.max_input_chars,
            settings.request_timeout,
        )
        state.service = SpeechService(engine, queue, voices, metrics, defaults)
        state.jobs = JobManager(
            state.service,
            objects,
            JobSettings(
                allowed_buckets=settings.buckets(),
                records=settings.records_uri(),
                max_running=settings.max_running_jobs,
                max_pending=settings.max_pending_jobs,
                max_text_chars=settings.max_job_chars,
                window=max(1, min(2 * max_batch, settings.max_queue // 2)),
                upload_attempts=settings.upload_attempts,
                retry_backoff=settings.retry_backoff,
                heartbeat_seconds=settings.job_heartbeat_seconds,
                stale_after=6 * settings.job_heartbeat_seconds,
            ),
            metrics,
        )
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
    transcriber_factory: Callable[[ServerSettings], Transcriber | None] = default_transcriber,
) -> FastAPI:
    state = ServerState(settings, ServerMetrics(), on_failure=on_failure)
    state.idle.set()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Voices fetched without a cache volume live in a scratch folder for this run.
        scratch = tempfile.TemporaryDirectory(prefix="tts-scratch-")
        state.loader = asyncio.create_task(
            _load(state, engine_factory, transcriber_factory, Path(scratch.name)),
            name="model-loader",
        )
        try:
            yield
        finally:
            state.ready = False
            state.metrics.ready.set(0)
            state.loader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await state.loader
            if state.jobs is not None:
                await state.jobs.close()
            if state.queue is not None:
                await state.queue.stop()
            if state.engine is not None:
                await asyncio.to_thread(state.engine.unload)
            scratch.cleanup()

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

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
        return error_response(exc.status, str(exc), param=exc.param, headers=headers)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
        return error_response(*error_status(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    from tts_inference.api_router import attach_router

    attach_router(app)
    app.add_middleware(Guard, state=state)
    return app
