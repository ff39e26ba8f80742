"""Asynchronous synthesis jobs: long text in, one audio object in the bucket out.

A job runs as an asyncio task owned by the app's lifespan. It reads its text
(inline or from an allowed ``s3://`` URI), splits it as F5-TTS does, and feeds
the chunks through the same batching queue as live requests, on the JOB lane:
live requests always go first, and a job keeps at most ``window`` chunks in the
queue (shared by all jobs), so it can never fill the queue against live
traffic. Chunks are cross-faded and encoded as they arrive into a temporary
file (memory stays flat for a chapter), which is uploaded to the final key
with ``upload_file``: one PUT or a multipart upload whose completion is
atomic, aborted on failure. So the object is whole or absent, and only after
it exists is the job marked succeeded.

Job ids and restarts. With an ``Idempotency-Key`` the id is derived from the
key (``sha256("tts-job\\0" + key)[:32]``), so every replica and every restart
maps a key to the same id without coordination. The job's record is written
to ``<jobs-uri>/<id>.json`` at each state change and every
``heartbeat_seconds`` while it runs, so a GET on any replica, or after a
restart, finds it by id alone (the output URI is chosen per job and cannot be
found from the id). A result record ``<output-key>.tts-job.json`` is written
beside the audio after the audio exists, and the audio carries the job id in
its metadata: a job whose index record is missing or stale but whose output
exists is reported succeeded, never failed.

The same key never runs twice: a repeated POST returns the existing job, here
or from the bucket. The one exception is a run that never finished (the
server stopped, or its heartbeats went stale): it is reported failed with
``retryable: true``, and a POST with the same key runs it again (``attempts``
counts the runs), which cannot produce a second output because the first
never wrote one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

from tts_inference import audio
from tts_inference.engine.base import Audio, SynthesisParams, SynthesisRequest
from tts_inference.errors import BadRequest, Unavailable
from tts_inference.metrics import JOB_STATES, ServerMetrics
from tts_inference.objects import ObjectError, ObjectStore, S3Uri, allowed_uri
from tts_inference.protocol import (
    JOB_FORMATS,
    TERMINAL_STATES,
    JobRequest,
    JobStatus,
)
from tts_inference.queue import JOB, QueueFull
from tts_inference.serving import SpeechService, StreamJoiner
from tts_inference.voices import DEFAULT, valid_name

log = logging.getLogger("tts_inference.jobs")

T = TypeVar("T")

MIB = 1024 * 1024
RESULT_SUFFIX = ".tts-job.json"
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}
MAX_KEY_CHARS = 255
INTERRUPTED = (
    "interrupted: the server stopped before the job finished; "
    "POST it again with the same Idempotency-Key to run it again"
)


def job_id_for(key: str | None) -> str:
    """The job id: derived from the idempotency key (the same on every replica), else random."""
    if key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"tts-job\0{key}".encode()).hexdigest()[:32]


def valid_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def default_owner() -> str:
    """This process: host (the pod), pid and a random id (a restarted container keeps the pid)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class JobSettings:
    allowed_buckets: tuple[str, ...] = ()
    records: S3Uri | None = None  # <jobs-uri>: where <id>.json records live
    max_running: int = 2
    max_pending: int = 256
    keep_finished: int = 1000
    max_text_chars: int = 2_000_000
    max_text_bytes: int = 8 * MIB
    window: int = 16  # job chunks in the queue at once, all jobs together
    upload_attempts: int = 3
    retry_backoff: float = 1.0
    heartbeat_seconds: float = 10.0
    stale_after: float = 60.0
    owner: str = field(default_factory=default_owner)


class JobFailed(Exception):
    """Why a job failed, in words for its status; ``retryable`` when running it again may work."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Job:
    status: JobStatus
    request: JobRequest
    output: S3Uri
    text_uri: S3Uri | None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    publishing: bool = False
    seq: int = 0
    written_seq: int = -1
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def terminal(self) -> bool:
        return self.status.state in TERMINAL_STATES


class AudioSink:
    """Cross-faded chunks into a file as they arrive: wav/flac by soundfile, mp3/opus by ffmpeg."""

    def __init__(self, path: str, fmt: str, sample_rate: int) -> None:
        self.joiner = StreamJoiner(sample_rate)
        self.samples = 0
        self._file: Any = None
        self._encoder: audio.StreamEncoder | None = None
        self._out: Any = None
        if fmt in ("wav", "flac"):
            self._file = sf.SoundFile(
                path, "w", sample_rate, 1, format=fmt.upper(), subtype="PCM_16"
            )
        else:
            self._encoder = audio.open_stream(fmt, sample_rate)
            self._out = open(path, "wb")  # noqa: SIM115 - closed in close()/abort()

    def _write(self, samples: Audio) -> None:
        if not len(samples):
            return
        samples = np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)
        if self._file is not None:
            self._file.write(samples)
        elif self._encoder is not None:
            self._out.write(self._encoder.feed(samples))
        self.samples += len(samples)

    def push(self, wave: Audio) -> None:
        self._write(self.joiner.push(wave))

    def close(self) -> None:
        self._write(self.joiner.flush())
        if self._file is not None:
            self._file.close()
        elif self._encoder is not None:
            self._out.write(self._encoder.close())
            self._out.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._file is not None:
                self._file.close()
        if self._encoder is not None:
            self._encoder.abort()
            with contextlib.suppress(Exception):
                self._out.close()


class JobManager:
    def __init__(
        self,
        service: SpeechService,
        objects: ObjectStore | None,
        settings: JobSettings,
        metrics: ServerMetrics,
    ) -> None:
        self.service = service
        self.objects = objects
        self.settings = settings
        self.metrics = metrics
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._submit_lock = asyncio.Lock()
        self._running = asyncio.Semaphore(max(settings.max_running, 1))
        self._slots = asyncio.Semaphore(max(settings.window, 1))
        self._closing = False

    # ------------------------------------------------------------------ validation

    def _check(self, req: JobRequest, job_id: str) -> tuple[S3Uri, str, S3Uri | None]:
        allowed = self.settings.allowed_buckets
        try:
            out = allowed_uri(req.output.uri, "output.uri", allowed)
        except ValueError as exc:
            raise BadRequest(str(exc), "output.uri") from None
        ext = out.key.rsplit(".", 1)[-1].lower() if "." in out.key.rsplit("/", 1)[-1] else ""
        fmt = req.output.format or (ext if ext in JOB_FORMATS else "wav")
        if not out.key or out.key.endswith("/"):
            out = S3Uri(out.bucket, f"{out.key}{job_id}.{fmt}")
        if out.key.endswith(RESULT_SUFFIX):
            raise BadRequest(f"output.uri must not end in {RESULT_SUFFIX}", "output.uri")
        text_uri = None
        if req.text_uri is not None:
            try:
                text_uri = allowed_uri(req.text_uri, "textUri", allowed)
            except ValueError as exc:
                raise BadRequest(str(exc), "textUri") from None
            if not text_uri.key or text_uri.key.endswith("/"):
                raise BadRequest("textUri must name an object, not a prefix", "textUri")
        elif req.text is not None and len(req.text) > self.settings.max_text_chars:
            raise BadRequest(
                f"text is {len(req.text)} characters; the limit is {self.settings.max_text_chars}",
                "text",
            )
        if req.voice != DEFAULT and not valid_name(req.voice):
            raise BadRequest(f"invalid voice name {req.voice!r}", "voice")
        return out, fmt, text_uri

    @staticmethod
    def _fingerprint(req: JobRequest) -> str:
        body = json.dumps(req.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    # ------------------------------------------------------------------ API

    async def submit(self, req: JobRequest, key: str | None) -> tuple[JobStatus, bool]:
        """Accept a job (or find the one with this key); returns (status, created)."""
        if key is not None and (
            not 0 < len(key) <= MAX_KEY_CHARS or not key.isprintable() or not key.isascii()
        ):
            raise BadRequest(
                f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
                "Idempotency-Key",
            )
        job_id = job_id_for(key)
        output, fmt, text_uri = self._check(req, job_id)
        fingerprint = self._fingerprint(req)
        attempts = 1
        async with self._submit_lock:
            existing = self._jobs.get(job_id)
            found = existing.status if existing is not None else None
            if found is None and key is not None:
                found = await asyncio.to_thread(self._lookup, job_id, output)
            if found is not None:
                if found.fingerprint and found.fingerprint != fingerprint:
                    raise BadRequest(
                        "this Idempotency-Key was used for a different job request; "
                        "use a new key for a new job",
                        "Idempotency-Key",
                        409,
                    )
                if not (found.state == "failed" and found.retryable):
                    if existing is None:  # remember what the bucket said
                        self._remember_record(found, req, output, text_uri)
                    return found.model_copy(deep=True), False
                attempts = found.attempts + 1
            active = sum(1 for j in self._jobs.values() if not j.terminal)
            if active >= self.settings.max_pending:
                raise BadRequest(
                    f"{active} jobs are queued or running; the limit is "
                    f"{self.settings.max_pending}: retry later",
                    status=429,
                )
            status = JobStatus(
                id=job_id,
                state="queued",
                idempotency_key=key,
                voice=req.voice,
                format=fmt,
                output_uri=str(output),
                attempts=attempts,
                created_at=_iso(),
                owner=self.settings.owner,
                fingerprint=fingerprint,
            )
            job = Job(status, req, output, text_uri)
            self._jobs[job_id] = job
            self._jobs.move_to_end(job_id)
            self._evict()
            self._count_states()
            job.task = asyncio.create_task(self._run(job), name=f"job-{job_id}")
        log.info("job %s accepted (attempt %d) -> %s", job_id, attempts, output)
        return status.model_copy(deep=True), True

    async def get(self, job_id: str) -> JobStatus:
        job = self._jobs.get(job_id) if valid_job_id(job_id) else None
        if job is not None:
            return job.status.model_copy(deep=True)
        found = None
        if valid_job_id(job_id) and self.settings.records is not None:
            found = await asyncio.to_thread(self._lookup, job_id, None)
        if found is None:
            raise BadRequest(f"unknown job {job_id!r}", "id", 404)
        return found

    async def cancel(self, job_id: str) -> JobStatus:
        """Stop a queued or running job (it ends failed, cancelled); a finished one is returned as is."""
        job = self._jobs.get(job_id) if valid_job_id(job_id) else None
        if job is None:
            return await self._cancel_elsewhere(job_id)
        if job.terminal:
            return job.status.model_copy(deep=True)
        if job.publishing:
            raise BadRequest(
                f"job {job_id} is uploading its output and can no longer be cancelled",
                "id",
                409,
            )
        job.cancel_reason = "cancelled"
        if job.task is not None:
            job.task.cancel()
            await asyncio.wait({job.task}, timeout=30)
        return job.status.model_copy(deep=True)

    async def _cancel_elsewhere(self, job_id: str) -> JobStatus:
        """A job another replica runs: leave a cancel marker its heartbeat will see."""
        status = await self.get(job_id)
        if status.state in TERMINAL_STATES or self.settings.records is None:
            return status
        assert self.objects is not None
        marker = self.settings.records.join(f"{job_id}.cancel")
        try:
            await asyncio.to_thread(
                self.objects.put_bytes, marker, b"cancel", "text/plain", what="record"
            )
        except ObjectError as exc:
            raise Unavailable(
                f"could not ask the server running {job_id} to cancel: {exc}"
            ) from None
        return status

    async def close(self) -> None:
        """Interrupt every queued or running job and wait (briefly) for their records."""
        self._closing = True
        tasks = []
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.cancel_reason = job.cancel_reason or "interrupted"
                job.task.cancel()
                tasks.append(job.task)
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    # ------------------------------------------------------------------ memory

    def _remember_record(
        self, status: JobStatus, req: JobRequest, output: S3Uri, text_uri: S3Uri | None
    ) -> None:
        if status.state not in TERMINAL_STATES:
            return  # running elsewhere: ask the bucket again next time
        self._jobs[status.id] = Job(status.model_copy(deep=True), req, output, text_uri)
        self._evict()

    def _evict(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.terminal]
        for job_id in finished[: max(len(finished) - self.settings.keep_finished, 0)]:
            del self._jobs[job_id]

    def _count_states(self) -> None:
        counts = dict.fromkeys(JOB_STATES, 0)
        for job in self._jobs.values():
            counts[job.status.state] += 1
        for state, n in counts.items():
            self.metrics.jobs.labels(state).set(n)

    # ------------------------------------------------------------------ records

    def _record_uri(self, job_id: str) -> S3Uri | None:
        records = self.settings.records
        return records.join(f"{job_id}.json") if records is not None else None

    async def _save(self, job: Job) -> None:
        """Write the job's record (latest state wins; never a stale state over a newer one)."""
        uri = self._record_uri(job.status.id)
        if uri is None or self.objects is None:
            return
        job.status.updated_at = _iso()
        job.seq += 1
        seq, data = job.seq, job.status.model_dump_json(by_alias=True, indent=1).encode()
        objects = self.objects

        def write() -> None:
            with job.write_lock:
                if seq <= job.written_seq:
                    return
                try:
                    objects.put_bytes(uri, data, "application/json", what="record")
                except ObjectError as exc:
                    log.warning("could not write the record of job %s: %s", job.status.id, exc)
                    return
                job.written_seq = seq

        await _finish_in_thread(write)

    def _lookup(self, job_id: str, output: S3Uri | None) -> JobStatus | None:
        """What the bucket says about a job this process does not hold (blocking)."""
        record: JobStatus | None = None
        uri = self._record_uri(job_id)
        objects = self.objects
        if uri is not None and objects is not None:
            try:
                record = JobStatus.model_validate_json(objects.get_bytes(uri, 1 * MIB))
            except ObjectError as exc:
                if not exc.missing:
                    raise Unavailable(f"could not read the record of job {job_id}: {exc}") from None
            except ValueError as exc:
                log.warning("the record of job %s is unreadable: %s", job_id, exc)
        if record is not None and record.state in TERMINAL_STATES:
            return record
        if record is not None and record.output_uri:
            output = S3Uri.parse(record.output_uri)
        result = self._result_beside(job_id, output) if output is not None else None
        if result is not None:
            return result
        if record is None:
            return None
        age = time.time() - (_epoch(record.updated_at) or 0.0)
        if age > self.settings.stale_after:
            record.state = "failed"
            record.retryable = True
            record.error = (
                f"interrupted: {record.owner or 'the server running it'} sent no heartbeat for "
                f"{age:.0f} s; POST it again with the same Idempotency-Key to run it again"
            )
        return record

    def _result_beside(self, job_id: str, output: S3Uri) -> JobStatus | None:
        """A succeeded job's status from its output: the result record, or the audio's metadata."""
        if self.objects is None:
            return None
        try:
            raw = self.objects.get_bytes(S3Uri(output.bucket, output.key + RESULT_SUFFIX), MIB)
            result = JobStatus.model_validate_json(raw)
            if result.id == job_id and result.state == "succeeded":
                return result
        except ObjectError as exc:
            if not exc.missing:
                raise Unavailable(f"could not read the result of job {job_id}: {exc}") from None
        except ValueError:
            pass
        try:
            head = self.objects.head(output)
        except ObjectError as exc:
            raise Unavailable(f"could not check the output of job {job_id}: {exc}") from None
        if head is not None and head.metadata.get("tts-job-id") == job_id:
            seconds = head.metadata.get("tts-audio-seconds")
            return JobStatus(
                id=job_id,
                state="succeeded",
                output_uri=str(output),
                audio_seconds=float(seconds) if seconds else None,
                progress=1.0,
            )
        return None

    # ------------------------------------------------------------------ running

    async def _run(self, job: Job) -> None:
        status = job.status
        try:
            with self.service.voices.hold(job.request.voice):
                await self._run_held(job)
        except asyncio.CancelledError:
            if job.cancel_reason == "cancelled":
                self._fail(job, f"cancelled: DELETE /v1/jobs/{status.id} stopped it")
                status.cancelled = True
            else:
                self._fail(job, INTERRUPTED, retryable=True)
        except JobFailed as exc:
            self._fail(job, str(exc), retryable=exc.retryable)
        except Exception as exc:
            log.exception("job %s failed", status.id)
            self._fail(job, f"{type(exc).__name__}: {exc}")
        finally:
            outcome = "cancelled" if status.cancelled else status.state
            if job.started is not None:
                self.metrics.job_seconds.labels(outcome).observe(time.monotonic() - job.started)
            self.metrics.jobs_finished.labels(outcome).inc()
            self._count_states()
            await self._save(job)
            log.info(
                "job %s %s%s", status.id, status.state, f": {status.error}" if status.error else ""
            )

    async def _run_held(self, job: Job) -> None:
        status = job.status
        await self._save(job)
        async with self._running:
            job.started = time.monotonic()
            status.state = "running"
            status.started_at = _iso()
            status.timings.queued_seconds = round(job.started - job.created, 3)
            self._count_states()
            await self._clear_cancel_marker(job)
            await self._save(job)
            heartbeat = (
                asyncio.create_task(self._heartbeat(job), name=f"heartbeat-{status.id}")
                if self.settings.records is not None
                else None
            )
            try:
                await self._execute(job)
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()

    def _fail(self, job: Job, message: str, *, retryable: bool = False) -> None:
        status = job.status
        if status.state == "succeeded":  # never report a job that succeeded as failed
            return
        status.state = "failed"
        status.error = message
        status.retryable = retryable
        status.completed_at = _iso()

    async def _heartbeat(self, job: Job) -> None:
        marker = (
            self.settings.records.join(f"{job.status.id}.cancel") if self.settings.records else None
        )
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)  # the heartbeat's period
            await self._save(job)
            if marker is not None and self.objects is not None and not job.publishing:
                try:
                    asked = await asyncio.to_thread(self.objects.head, marker)
                except ObjectError:
                    continue
                if asked is not None and job.task is not None:
                    log.info("job %s: cancel requested through another replica", job.status.id)
                    job.cancel_reason = "cancelled"
                    job.task.cancel()
                    return

    async def _clear_cancel_marker(self, job: Job) -> None:
        if self.settings.records is None or self.objects is None or job.status.attempts <= 1:
            return
        with contextlib.suppress(ObjectError):
            await asyncio.to_thread(
                self.objects.delete, self.settings.records.join(f"{job.status.id}.cancel")
            )

    def _read_text(self, uri: S3Uri) -> str:
        if self.objects is None:
            raise JobFailed("this server has no bucket access for textUri")
        try:
            data = self.objects.get_bytes(uri, self.settings.max_text_bytes)
        except ObjectError as exc:
            raise JobFailed(
                f"could not read textUri {uri}: {exc}", retryable=not exc.fatal
            ) from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JobFailed(f"textUri {uri} is not UTF-8 text: {exc}") from None
        if not text.strip():
            raise JobFailed(f"textUri {uri} holds no text")
        if len(text) > self.settings.max_text_chars:
            raise JobFailed(
                f"textUri {uri} holds {len(text)} characters; the limit is "
                f"{self.settings.max_text_chars}"
            )
        return text

    async def _execute(self, job: Job) -> None:
        status, req = job.status, job.request
        service = self.service
        started = time.monotonic()
        text = req.text
        if job.text_uri is not None:
            text = await asyncio.to_thread(self._read_text, job.text_uri)
        assert text is not None
        voices = service.voices
        try:
            voice = voices.cached(req.voice)
            if voice is None:
                voice = await asyncio.to_thread(voices.get, req.voice)
        except BadRequest as exc:
            raise JobFailed(str(exc)) from None
        except Unavailable as exc:
            raise JobFailed(str(exc), retryable=True) from None
        defaults = service.defaults
        params = SynthesisParams(
            speed=req.params.speed,
            nfe_step=req.params.nfe_step or defaults.nfe_step,
            cfg_strength=defaults.cfg_strength
            if req.params.cfg_strength is None
            else req.params.cfg_strength,
        )
        pieces = await asyncio.to_thread(service.engine.split_text, text.strip(), voice, params)
        pieces = [p for p in pieces if p.strip()] or [text.strip()]
        seed = req.params.seed
        chunks = [
            SynthesisRequest(
                piece,
                voice,
                dataclasses.replace(params, seed=None if seed is None else (seed + i) % 2**32),
            )
            for i, piece in enumerate(pieces)
        ]
        status.chunks_total = len(chunks)
        status.timings.fetch_seconds = round(time.monotonic() - started, 3)
        rate = service.engine.sample_rate
        fmt = status.format or "wav"
        with tempfile.TemporaryDirectory(prefix="tts-job-") as tmp:
            path = os.path.join(tmp, f"output.{fmt}")
            sink = AudioSink(path, fmt, rate)
            try:
                t0 = time.monotonic()
                await self._synthesize(job, chunks, sink)
                t1 = time.monotonic()
                await _finish_in_thread(sink.close)
            except BaseException:
                sink.abort()
                raise
            status.timings.synthesis_seconds = round(t1 - t0, 3)
            status.timings.encode_seconds = round(time.monotonic() - t1, 3)
            seconds = sink.samples / rate
            if sink.samples == 0:
                raise JobFailed("the text produced no audio")
            # From here the job finishes truthfully whatever happens: no cancelling an upload.
            job.publishing = True
            t2 = time.monotonic()
            await _finish_in_thread(self._upload, job, path, seconds, swallow_cancel=True)
            status.timings.upload_seconds = round(time.monotonic() - t2, 3)
        assert job.started is not None
        elapsed = time.monotonic() - job.started
        status.state = "succeeded"
        status.audio_seconds = round(seconds, 3)
        status.rtf = round(elapsed / seconds, 4) if seconds > 0 else None
        status.progress = 1.0
        status.completed_at = _iso()
        status.timings.total_seconds = round(time.monotonic() - job.created, 3)
        status.error = None
        status.retryable = False
        self.metrics.audio_seconds.labels(fmt).inc(seconds)
        await _finish_in_thread(self._write_result, job)

    async def _synthesize(self, job: Job, chunks: list[SynthesisRequest], sink: AudioSink) -> None:
        """Every chunk through the queue's JOB lane, at most ``window`` at a time, in order."""
        queue = self.service.queue
        status = job.status
        pending: dict[int, Any] = {}
        n = len(chunks)
        submitted = written = 0
        try:
            while written < n:
                while submitted < n and len(pending) < self.settings.window:
                    if self._slots.locked() and pending:
                        break  # other jobs hold the slots: wait for our own chunks first
                    await self._slots.acquire()
                    try:
                        pending[submitted] = queue.submit(chunks[submitted], priority=JOB)
                    except QueueFull:
                        self._slots.release()
                        break
                    submitted += 1
                if written not in pending:
                    # The queue is full of live requests: they go first; try again shortly.
                    await asyncio.sleep(0.05)
                    continue
                item = pending[written]
                try:
                    wave = await item.future
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    raise JobFailed(
                        f"synthesis failed on chunk {written + 1} of {n}: {type(exc).__name__}: {exc}",
                        retryable=True,
                    ) from None
                del pending[written]
                self._slots.release()
                await _finish_in_thread(sink.push, wave)
                written += 1
                status.chunks_done = written
                status.progress = round(written / n, 4)
        finally:
            for item in pending.values():
                item.future.cancel()
                self._slots.release()

    def _upload(self, job: Job, path: str, seconds: float) -> None:
        """Upload the audio to its final key, retrying; whole or not at all (blocking)."""
        if self.objects is None:
            raise JobFailed("this server has no bucket access for the output")
        status = job.status
        fmt = status.format or "wav"
        metadata = {"tts-job-id": status.id, "tts-audio-seconds": f"{seconds:.3f}"}
        attempts = max(self.settings.upload_attempts, 1)
        for attempt in range(1, attempts + 1):
            try:
                self.objects.upload_file(path, job.output, CONTENT_TYPES[fmt], metadata=metadata)
                return
            except ObjectError as exc:
                if exc.fatal or attempt == attempts:
                    self._abort_leftovers(job.output)
                    raise JobFailed(
                        f"uploading the output to {job.output} failed after {attempt} "
                        f"attempt(s): {exc}",
                        retryable=not exc.fatal,
                    ) from None
                delay = self.settings.retry_backoff * 2 ** (attempt - 1)
                log.warning(
                    "job %s: upload attempt %d failed (%s); retrying in %.1f s",
                    status.id,
                    attempt,
                    exc,
                    delay,
                )
                time.sleep(delay)  # backoff between upload attempts, in the upload's own thread

    def _abort_leftovers(self, output: S3Uri) -> None:
        """Abort multipart uploads s3transfer could not abort itself (best effort)."""
        if self.objects is None:
            return
        with contextlib.suppress(ObjectError, Exception):
            for upload_id in self.objects.pending_uploads(output):
                self.objects.client.abort_multipart_upload(
                    Bucket=output.bucket, Key=output.key, UploadId=upload_id
                )

    def _write_result(self, job: Job) -> None:
        """The result record beside the audio (after the audio exists). Blocking, best effort."""
        if self.objects is None:
            return
        uri = S3Uri(job.output.bucket, job.output.key + RESULT_SUFFIX)
        data = job.status.model_dump_json(by_alias=True, indent=1).encode()
        try:
            self.objects.put_bytes(uri, data, "application/json", what="record")
        except ObjectError as exc:
            log.warning("could not write the result record of job %s: %s", job.status.id, exc)


async def _finish_in_thread(fn: Callable[..., T], *args: Any, swallow_cancel: bool = False) -> T:
    """Run ``fn`` in a thread and wait for it to end even when cancelled (a thread cannot
    be stopped, so nothing may go on as if it had). Then the cancellation is raised, or,
    with ``swallow_cancel``, dropped: the caller finishes its work and reports the truth."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.done() or (not future.cancelled() and future.exception() is None):
                cancelled = True
        except Exception:
            break  # future.result() below raises it
    result = future.result()
    if cancelled:
        if not swallow_cancel:
            raise asyncio.CancelledError
        if (task := asyncio.current_task()) is not None:
            task.uncancel()
    return result
