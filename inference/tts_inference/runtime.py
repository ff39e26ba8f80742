"""The composition root: everything a server or a run-job pod runs on, built in one place.

``open_runtime`` is an async context manager. On entry it builds the side that
needs no model (the bucket's object store, the voices, the job manager); the
model is loaded later by ``Runtime.load`` (the server in a background task so
/healthz answers meanwhile, run-job only after a job's inputs checked out).
On exit it tears down in reverse: jobs interrupted, queue stopped, engine
unloaded, scratch folder removed. The server's lifespan and ``run-job`` both
use it, so the engine, queue, voices, speech service and job manager are made
one way with one set of defaults.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tts_inference import __version__
from tts_inference.engine.base import Engine
from tts_inference.jobs import JobManager, JobSettings
from tts_inference.metrics import ServerMetrics
from tts_inference.queue import BatchQueue
from tts_inference.serving import Defaults, SpeechService
from tts_inference.settings import ServerSettings
from tts_inference.storage.bucket import ObjectStore, make_client, parse_uri
from tts_inference.voices import Transcriber, VoiceLimits, VoiceStore

log = logging.getLogger("tts_inference.runtime")

EngineFactory = Callable[[ServerSettings], Engine]
TranscriberFactory = Callable[[ServerSettings], Transcriber | None]


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


def no_transcriber(settings: ServerSettings) -> Transcriber | None:
    return None


def job_window(max_batch: int, max_queue: int) -> int:
    """Job chunks in the queue at once, all jobs together: two batches, at most half the queue."""
    return max(1, min(2 * max_batch, max_queue // 2))


def synthesis_defaults(settings: ServerSettings) -> Defaults:
    return Defaults(
        settings.nfe_step,
        settings.cfg_strength,
        settings.max_input_chars,
        settings.request_timeout,
    )


def job_settings(settings: ServerSettings, max_batch: int) -> JobSettings:
    return JobSettings(
        allowed_buckets=settings.buckets(),
        records=settings.records_uri(),
        max_running=settings.max_running_jobs,
        max_pending=settings.max_pending_jobs,
        max_text_chars=settings.max_job_chars,
        window=job_window(max_batch, settings.max_queue),
        upload_attempts=settings.upload_attempts,
        retry_backoff=settings.retry_backoff,
        heartbeat_seconds=settings.job_heartbeat_seconds,
        stale_after=6 * settings.job_heartbeat_seconds,
    )


def _cuda_memory() -> float:
    import torch

    return float(torch.cuda.memory_allocated())


@dataclass
class Runtime:
    """What requests and jobs run on. ``engine``, ``queue`` and ``service`` are None until
    ``load`` has run."""

    settings: ServerSettings
    metrics: ServerMetrics
    voices: VoiceStore
    objects: ObjectStore | None
    jobs: JobManager
    engine: Engine | None = None
    queue: BatchQueue | None = None
    service: SpeechService | None = None

    async def load(self, engine_factory: EngineFactory = default_engine) -> SpeechService:
        """Build and load the engine (in a worker thread), start the queue, and give the
        speech service to the job manager."""
        settings, metrics = self.settings, self.metrics
        started = time.monotonic()
        engine = await asyncio.to_thread(engine_factory, settings)
        self.engine = engine
        await asyncio.to_thread(engine.load)
        metrics.load_seconds.set(time.monotonic() - started)
        await asyncio.to_thread(metrics.track_cache, settings.model_dir, settings.cache_dir)
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
        self.queue = queue
        self.service = SpeechService(
            engine, queue, self.voices, metrics, synthesis_defaults(settings)
        )
        self.jobs.attach(self.service, job_window(max_batch, settings.max_queue))
        log.info("model loaded: %s", ", ".join(f"{k}={v}" for k, v in info.items()))
        return self.service

    async def close(self) -> None:
        """Tear down in reverse order of building: jobs, queue, engine."""
        await self.jobs.close()
        if self.queue is not None:
            await self.queue.stop()
        if self.engine is not None:
            await asyncio.to_thread(self.engine.unload)


def _objects(settings: ServerSettings, metrics: ServerMetrics) -> ObjectStore | None:
    """The bucket, when voices or jobs use one."""
    if not settings.voices_uri and not settings.buckets():
        return None
    attempts = settings.s3_max_attempts
    return ObjectStore(
        lambda: make_client(max_pool=16, max_attempts=attempts),
        part_bytes=settings.upload_part_bytes,
        on_upload=lambda what, n: metrics.upload_bytes.labels(what).inc(n),
    )


@asynccontextmanager
async def open_runtime(
    settings: ServerSettings,
    metrics: ServerMetrics,
    transcriber_factory: TranscriberFactory = default_transcriber,
) -> AsyncIterator[Runtime]:
    """A Runtime without a model yet; closed (and its scratch folder removed) on exit."""
    remote = parse_uri(settings.voices_uri, "--voices-uri") if settings.voices_uri else None
    # Voices fetched without a cache volume live in a scratch folder for this run.
    with tempfile.TemporaryDirectory(prefix="tts-scratch-") as scratch:
        objects = _objects(settings, metrics)
        cache = settings.cache_dir or (Path(scratch) if remote is not None else None)
        transcriber = await asyncio.to_thread(transcriber_factory, settings)
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
        max_batch = settings.max_batch or Engine.max_batch
        jobs = JobManager(None, objects, job_settings(settings, max_batch), metrics, voices=voices)
        runtime = Runtime(settings, metrics, voices, objects, jobs)
        try:
            yield runtime
        finally:
            await runtime.close()
