"""The routes: health, readiness, metrics, and the OpenAI-compatible speech endpoint.

Thin: each route gets the service from app.state, calls it, and shapes the
response. /healthz and /readyz read flags only; they never touch the model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tts_inference import audio
from tts_inference.app import ServerState, error_response
from tts_inference.protocol import ModelCard, ModelList, SpeechRequest
from tts_inference.serving import SpeechService, StreamStats, cancel_on_disconnect

router = APIRouter()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tts
    return state


def _service(request: Request) -> SpeechService:
    service = _state(request).service
    if service is None:  # the guard already answered 503 while loading
        raise RuntimeError("the speech service is not ready")
    return service


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 only after the model loaded and warmed up, and not while draining."""
    ok, why = _state(request).readiness()
    if ok:
        return JSONResponse({"status": "ready"})
    return error_response(503, why, headers={"Retry-After": "5"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(id=_state(request).settings.model_name)])


@router.post("/v1/audio/speech", response_model=None)
async def speech(body: SpeechRequest, request: Request) -> Response:
    service = _service(request)
    chunks, fmt = service.prepare(body)
    started = time.monotonic()
    content_type = audio.CONTENT_TYPES[fmt]
    metrics = _state(request).metrics

    def first_byte() -> None:
        metrics.first_byte_seconds.labels(fmt).observe(time.monotonic() - started)

    if len(chunks) > 1 or body.stream_format == "audio":
        stats = StreamStats()

        async def body_iter() -> AsyncIterator[bytes]:
            async for data in service.stream(chunks, fmt, first_byte, stats):
                yield data
            service.record(fmt, stats.samples / service.engine.sample_rate, started)

        return StreamingResponse(body_iter(), media_type=content_type)

    task = asyncio.ensure_future(service.synthesize(chunks))
    watcher = asyncio.ensure_future(cancel_on_disconnect(request.is_disconnected, task))
    try:
        wave = await task
    except asyncio.CancelledError:
        return Response(status_code=499)
    finally:
        watcher.cancel()
    data = await asyncio.to_thread(audio.encode, wave, service.engine.sample_rate, fmt)
    first_byte()
    service.record(fmt, len(wave) / service.engine.sample_rate, started)
    return Response(data, media_type=content_type)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
