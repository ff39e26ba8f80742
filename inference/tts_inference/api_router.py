"""The routes: health, readiness, metrics, OpenAI-compatible speech, voices and jobs.

Thin: each route gets the service from app.state, calls it, and shapes the
response. /healthz and /readyz read flags only; they never touch the model.
Voice operations block (ffmpeg, the bucket, file locks) and run in a worker
thread; jobs run as tasks of the JobManager.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, Header, Request, Response, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tts_inference import audio
from tts_inference.errors import BadRequest, error_response
from tts_inference.jobs import JobManager
from tts_inference.protocol import (
    ErrorResponse,
    JobRequest,
    JobStatus,
    ModelCard,
    ModelList,
    SpeechRequest,
    VoiceDeleted,
    VoiceInfo,
    VoiceList,
)
from tts_inference.serving import SpeechService, StreamStats, cancel_on_disconnect
from tts_inference.state import ServerState
from tts_inference.voices import DEFAULT, VoiceStore, check_name

#: The statuses a /v1 route may answer besides its own, all in the one error shape.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "The request is invalid; the message says what and where."),
        (401, "The API key is missing or wrong."),
        (404, "No such voice or job."),
        (409, "The request conflicts with what exists."),
        (413, "The body or upload is over its limit."),
        (429, "The queue is full; retry after Retry-After seconds."),
        (499, "The client went away."),
        (503, "Loading, draining or a dependency failed; retry after Retry-After seconds."),
        (504, "The request waited past its deadline."),
    )
}

router = APIRouter(responses=ERRORS)


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.tts
    return state


def _service(request: Request) -> SpeechService:
    service = _state(request).service
    if service is None:  # the guard already answered 503 while loading
        raise RuntimeError("the speech service is not ready")
    return service


def _voices(request: Request) -> VoiceStore:
    return _service(request).voices


def _jobs(request: Request) -> JobManager:
    jobs = _state(request).jobs
    if jobs is None:
        raise RuntimeError("the job manager is not ready")
    return jobs


def _job_response(
    status: JobStatus, code: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status.model_dump(mode="json", by_alias=True), code, headers=headers)


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


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


@router.get("/v1/models")
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelCard(id=_state(request).settings.model_name)])


@router.post(
    "/v1/audio/speech",
    response_model=None,
    responses={
        200: {
            "description": "The audio; with stream_format sse, text/event-stream of "
            "speech.audio.delta events and a final speech.audio.done (or error) event.",
            "content": {
                **{ctype: {} for ctype in sorted(set(audio.CONTENT_TYPES.values()))},
                "text/event-stream": {},
            },
        },
    },
)
async def speech(body: SpeechRequest, request: Request) -> Response:
    service = _service(request)
    chunks, fmt = await service.prepare(body)
    started = time.monotonic()
    metrics = _state(request).metrics

    def first_byte() -> None:
        metrics.first_byte_seconds.labels(fmt).observe(time.monotonic() - started)

    if body.stream_format == "sse" or len(chunks) > 1 or body.stream_format == "audio":
        stats = StreamStats()
        if body.stream_format == "sse":
            pieces = service.events(chunks, fmt, first_byte, stats, len(body.input))
            media_type = "text/event-stream"
        else:
            pieces = service.stream(chunks, fmt, first_byte, stats)
            media_type = audio.CONTENT_TYPES[fmt]
        # The first piece is awaited here, so a failure before any audio (a full queue, a
        # failed first chunk) is an ordinary error status rather than a stream cut short.
        first = await _first(pieces)

        async def body_iter() -> AsyncIterator[bytes]:
            try:
                if first is not None:
                    yield first
                    async for data in pieces:
                        yield data
            finally:
                await pieces.aclose()
            service.record(fmt, stats.samples / service.engine.sample_rate, started)

        headers = {"Cache-Control": "no-cache"} if body.stream_format == "sse" else None
        return StreamingResponse(body_iter(), media_type=media_type, headers=headers)

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
    return Response(data, media_type=audio.CONTENT_TYPES[fmt])


async def _first(pieces: AsyncGenerator[bytes, None]) -> bytes | None:
    """The stream's first piece, or None when it has none; a failure closes the stream."""
    try:
        return await anext(pieces)
    except StopAsyncIteration:
        return None
    except BaseException:
        await pieces.aclose()
        raise


# --------------------------------------------------------------------------- voices


@router.post("/v1/voices", status_code=201, response_model=None)
async def create_voice(
    request: Request,
    name: Annotated[str, Form(description="The voice's name.")],
    file: Annotated[UploadFile | None, File(description="The reference audio.")] = None,
    audio_file: Annotated[
        UploadFile | None, File(alias="audio", description="Same as file.")
    ] = None,
    text: Annotated[str, Form(description="The words spoken in the clip.")] = "",
) -> JSONResponse:
    upload = file or audio_file
    if upload is None:
        raise BadRequest("file: an audio file is required (multipart field 'file')", "file")
    store = _voices(request)
    check_name(name)
    limit = store.limits.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise BadRequest(f"the audio file is over the limit of {limit} bytes", "file", 413)
    info = await asyncio.to_thread(store.create, name, data, text)
    return JSONResponse(VoiceInfo(**info).model_dump(mode="json", by_alias=True), 201)


@router.get("/v1/voices")
async def list_voices(request: Request) -> VoiceList:
    store = _voices(request)
    names = await asyncio.to_thread(store.names)
    return VoiceList(
        data=[VoiceInfo(name=n, builtin=n == DEFAULT, aliases=store.aliases_of(n)) for n in names]
    )


@router.get("/v1/voices/{name}", response_model=None)
async def get_voice(name: str, request: Request) -> JSONResponse:
    info = await asyncio.to_thread(_voices(request).info, name)
    return JSONResponse(VoiceInfo(**info).model_dump(mode="json", by_alias=True))


@router.delete("/v1/voices/{name}")
async def delete_voice(name: str, request: Request) -> VoiceDeleted:
    await asyncio.to_thread(_voices(request).delete, name)
    return VoiceDeleted(name=name)


# --------------------------------------------------------------------------- jobs


@router.post("/v1/jobs", status_code=202, response_model=None)
async def create_job(
    body: JobRequest,
    request: Request,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    status, created = await _jobs(request).submit(body, idempotency_key)
    return _job_response(status, 202, None if created else {"Idempotent-Replayed": "true"})


@router.get("/v1/jobs/{job_id}", response_model=None)
async def get_job(job_id: str, request: Request) -> JSONResponse:
    return _job_response(await _jobs(request).get(job_id), 200)


@router.delete("/v1/jobs/{job_id}", response_model=None)
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    return _job_response(await _jobs(request).cancel(job_id), 200)


def attach_router(app: FastAPI) -> None:
    app.include_router(router)
