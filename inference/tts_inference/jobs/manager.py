"""JobManager: submission, lookup, cancelling and running of jobs (see the package's notes)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, NoReturn

from tts_inference import audio
from tts_inference.engine.base import SAMPLE_RATE, SynthesisParams, SynthesisRequest, Voice
from tts_inference.errors import BadRequest, QueueFull, Unavailable
from tts_inference.jobs import parts as job_parts
from tts_inference.jobs.job import Job, JobFailed, JobSettings, finish_in_thread, iso_now
from tts_inference.jobs.records import RESULT_SUFFIX, Records, job_id_for, result_uri, valid_job_id
from tts_inference.jobs.sink import AudioSink
from tts_inference.metrics import JOB_STATES, ServerMetrics
from tts_inference.protocol import JOB_FORMATS, TERMINAL_STATES, JobRequest, JobStatus
from tts_inference.queue import JOB
from tts_inference.serving import SpeechService
from tts_inference.storage.bucket import Head, ObjectStore, S3Uri, StorageError, allowed_uri
from tts_inference.voices import DEFAULT, VoiceStore, valid_name

log = logging.getLogger("tts_inference.jobs")

MAX_KEY_CHARS = 255
INTERRUPTED = (
    "interrupted: the server stopped before the job finished; "
    "POST it again with the same Idempotency-Key to run it again"
)


class JobManager:
    """Jobs: validated, made idempotent, fed through the queue's JOB lane, uploaded whole.

    ``service`` (engine, queue, defaults) may be given later: run-job checks a job's
    inputs with ``voices`` and ``objects`` alone before it loads the model.
    """

    def __init__(
        self,
        service: SpeechService | None,
        objects: ObjectStore | None,
        settings: JobSettings,
        metrics: ServerMetrics,
        *,
        voices: VoiceStore | None = None,
    ) -> None:
        if voices is None:
            if service is None:
                raise ValueError("a JobManager needs a SpeechService or a VoiceStore")
            voices = service.voices
        self.service = service
        self.voices = voices
        self.objects = objects
        self.settings = settings
        self.metrics = metrics
        self.records = Records(objects, settings.records, settings.stale_after)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._submit_lock = asyncio.Lock()
        self._running = asyncio.Semaphore(max(settings.max_running, 1))
        self._slots = asyncio.Semaphore(max(settings.window, 1))
        self._closing = False

    def attach(self, service: SpeechService, window: int) -> None:
        """The speech service once the model is loaded, and the chunks all jobs together may
        keep in its queue (sized by the engine's batch). Before any job runs."""
        self.service = service
        self.settings = replace(self.settings, window=window)
        self._slots = asyncio.Semaphore(max(window, 1))

    # ------------------------------------------------------------------ validation

    def _speech(self) -> SpeechService:
        if self.service is None:
            raise RuntimeError("the job manager has no speech service (no model loaded)")
        return self.service

    def _rate(self) -> int:
        return self.service.engine.sample_rate if self.service is not None else SAMPLE_RATE

    def _check(self, req: JobRequest, job_id: str) -> tuple[S3Uri, str, S3Uri | None, S3Uri | None]:
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
        ref_uri = None
        if isinstance(req.voice, str):
            if req.voice != DEFAULT and not valid_name(req.voice):
                raise BadRequest(f"invalid voice name {req.voice!r}", "voice")
        else:
            try:
                ref_uri = allowed_uri(req.voice.ref_audio, "voice.refAudio", allowed)
            except ValueError as exc:
                raise BadRequest(str(exc), "voice.refAudio") from None
            if not ref_uri.key or ref_uri.key.endswith("/"):
                raise BadRequest(
                    "voice.refAudio must name an object, not a prefix", "voice.refAudio"
                )
        return out, fmt, text_uri, ref_uri

    @staticmethod
    def _fingerprint(req: JobRequest) -> str:
        body = json.dumps(req.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    # ------------------------------------------------------------------ API

    def prepare(
        self,
        req: JobRequest,
        key: str | None = None,
        *,
        job_id: str | None = None,
        part: int = 0,
        parts: int = 1,
    ) -> Job:
        """A validated job, not started (BadRequest for what is wrong with the request).

        ``job_id`` defaults to the one derived from ``key``; an output ending in "/"
        becomes ``<prefix><job_id>.<format>``.
        """
        if not 0 <= part < parts:
            raise BadRequest(f"part {part} of {parts}: the index must be 0 to {parts - 1}", "part")
        job_id = job_id or job_id_for(key)
        output, fmt, text_uri, ref_uri = self._check(req, job_id)
        status = JobStatus(
            id=job_id,
            state="queued",
            idempotency_key=key,
            voice=req.voice_label(),
            format=fmt,
            output_uri=str(output),
            created_at=iso_now(),
            owner=self.settings.owner,
            fingerprint=self._fingerprint(req),
        )
        return Job(status, req, output, text_uri, ref_uri=ref_uri, part=part, parts=parts)

    async def submit(self, req: JobRequest, key: str | None) -> tuple[JobStatus, bool]:
        """Accept a job (or find the one with this key); returns (status, created)."""
        if key is not None and (
            not 0 < len(key) <= MAX_KEY_CHARS or not key.isprintable() or not key.isascii()
        ):
            raise BadRequest(
                f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters",
                "Idempotency-Key",
            )
        job = self.prepare(req, key)
        job_id, fingerprint, status = job.status.id, job.status.fingerprint, job.status
        async with self._submit_lock:
            existing = self._jobs.get(job_id)
            found = existing.status if existing is not None else None
            if found is None and key is not None:
                found = await asyncio.to_thread(self.records.lookup, job_id, job.output)
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
                        self._remember_record(found, job)
                    return found.model_copy(deep=True), False
                status.attempts = found.attempts + 1
            active = sum(1 for j in self._jobs.values() if not j.terminal)
            if active >= self.settings.max_pending:
                raise BadRequest(
                    f"{active} jobs are queued or running; the limit is "
                    f"{self.settings.max_pending}: retry later",
                    status=429,
                )
            if job.ref_uri is not None and not isinstance(req.voice, str):
                # A clip that cannot be used refuses the job now (a 4xx); one the bucket
                # cannot serve right now is met again, and reported, by the job itself.
                with contextlib.suppress(Unavailable):
                    await asyncio.to_thread(
                        self.voices.reference, job.ref_uri, req.voice.ref_text, transcribe=False
                    )
            status.created_at = iso_now()
            job.created = time.monotonic()
            self._jobs[job_id] = job
            self._jobs.move_to_end(job_id)
            self._evict()
            self._count_states()
            job.task = asyncio.create_task(self._run(job), name=f"job-{job_id}")
        log.info("job %s accepted (attempt %d) -> %s", job_id, status.attempts, job.output)
        return status.model_copy(deep=True), True

    async def finished(self, job: Job) -> JobStatus | None:
        """The result of an earlier run of this same request when its output exists (so it
        must not run again); JobFailed (permanent) when the output holds another request's
        audio under the same job id."""
        found = await asyncio.to_thread(self.records.result_beside, job.status.id, job.output)
        if found is None:
            return None
        if found.fingerprint and found.fingerprint != job.status.fingerprint:
            raise JobFailed(
                f"{job.output} already holds the audio of a different request for job "
                f"{job.status.id}: delete it (and its {RESULT_SUFFIX}) or choose another output",
                permanent=True,
            )
        return found

    def check_output(self, job: Job) -> None:
        """Whether the output's bucket is there and readable, before any work (blocking).

        Reads the result record's key (usually absent): a missing bucket or a denied
        key fails permanently, other errors are worth a retry.
        """
        if self.objects is None:
            raise JobFailed("no bucket access for the output", permanent=True)
        uri = result_uri(job.output)
        try:
            self.objects.exists(uri)
        except StorageError as exc:
            self._output_error(job, uri, exc)
        if job.parts > 1:  # the parts are listed to find out whether all are there
            prefix = job_parts.parts_prefix(job.output)
            try:
                self.objects.list_keys(prefix, limit=1)
            except StorageError as exc:
                self._output_error(job, prefix, exc)

    @staticmethod
    def _output_error(job: Job, uri: S3Uri, exc: StorageError) -> NoReturn:
        if exc.code == "NoSuchBucket":
            raise JobFailed(
                f"the output bucket {job.output.bucket!r} does not exist ({exc})",
                permanent=True,
            ) from None
        raise JobFailed.of_storage(f"could not use the output {job.output}: {exc}", exc) from None

    async def gather(self, job: Job) -> None:
        """The job's text and voice, and for a part whether it is already uploaded: all
        that needs no model, so run-job checks its inputs before loading one. JobFailed."""
        if job.text is None:
            text = job.request.text
            if job.text_uri is not None:
                text = await asyncio.to_thread(self._read_text, job.text_uri)
            assert text is not None
            job.text = text.strip()
        if job.voice is None:
            job.voice = await asyncio.to_thread(self._voice, job)
        if job.parts > 1 and not job.part_checked:
            if self.objects is None:
                raise JobFailed("no bucket access for the parts", permanent=True)
            job.part_head = await asyncio.to_thread(job_parts.part_done, self.objects, job)
            job.part_checked = True

    async def run(self, job: Job) -> None:
        """Run a prepared job here, to its end (run-job); the outcome is in ``job.status``."""
        self._jobs[job.status.id] = job
        job.task = asyncio.current_task()
        try:
            await self._run(job)
        finally:
            job.task = None  # the caller's task goes on: close() must not cancel it

    async def get(self, job_id: str) -> JobStatus:
        job = self._jobs.get(job_id) if valid_job_id(job_id) else None
        if job is not None:
            task = job.task
            if job.terminal and task is not None and not task.done():
                # Ended, its record still being written: report the end once it is recorded,
                # so whoever reads the bucket next finds what this answer says.
                await asyncio.wait({task}, timeout=30)
            return job.status.model_copy(deep=True)
        found = None
        if valid_job_id(job_id) and self.records.prefix is not None:
            found = await asyncio.to_thread(self.records.lookup, job_id, None)
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
        if status.state not in TERMINAL_STATES:
            await self.records.ask_cancel(job_id)
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

    def _remember_record(self, status: JobStatus, job: Job) -> None:
        if status.state not in TERMINAL_STATES:
            return  # running elsewhere: ask the bucket again next time
        self._jobs[status.id] = Job(
            status.model_copy(deep=True), job.request, job.output, job.text_uri, ref_uri=job.ref_uri
        )
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

    # ------------------------------------------------------------------ running

    async def _run(self, job: Job) -> None:
        status = job.status
        voice = job.request.voice
        try:
            with self.voices.hold(voice) if isinstance(voice, str) else contextlib.nullcontext():
                await self._run_held(job)
        except asyncio.CancelledError:
            if job.cancel_reason == "cancelled":
                self._fail(job, f"cancelled: DELETE /v1/jobs/{status.id} stopped it")
                status.cancelled = True
            else:
                self._fail(job, INTERRUPTED, retryable=True)
        except JobFailed as exc:
            self._fail(job, str(exc), retryable=exc.retryable)
            job.permanent = exc.permanent
        except Exception as exc:
            log.exception("job %s failed", status.id)
            self._fail(job, f"{type(exc).__name__}: {exc}")
        finally:
            outcome = "cancelled" if status.cancelled else status.state
            if job.started is not None:
                self.metrics.job_seconds.labels(outcome).observe(time.monotonic() - job.started)
            self.metrics.jobs_finished.labels(outcome).inc()
            self._count_states()
            await self.records.save(job)
            log.info(
                "job %s %s%s", status.id, status.state, f": {status.error}" if status.error else ""
            )

    async def _run_held(self, job: Job) -> None:
        status = job.status
        await self.records.save(job)
        async with self._running:
            job.started = time.monotonic()
            status.state = "running"
            status.started_at = iso_now()
            status.timings.queued_seconds = round(job.started - job.created, 3)
            self._count_states()
            if job.status.attempts > 1:
                await self.records.clear_cancel(job.status.id)
            await self.records.save(job)
            heartbeat = (
                asyncio.create_task(self._heartbeat(job), name=f"heartbeat-{status.id}")
                if self.records.indexed
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
        status.completed_at = iso_now()

    async def _heartbeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)  # the heartbeat's period
            await self.records.save(job)
            if job.publishing or not await self.records.cancel_asked(job.status.id):
                continue
            if job.task is not None:
                log.info("job %s: cancel requested through another replica", job.status.id)
                job.cancel_reason = "cancelled"
                job.task.cancel()
                return

    def _read_text(self, uri: S3Uri) -> str:
        if self.objects is None:
            raise JobFailed("this server has no bucket access for textUri", permanent=True)
        try:
            data = self.objects.get_bytes(uri, self.settings.max_text_bytes)
        except StorageError as exc:
            raise JobFailed.of_storage(f"could not read textUri {uri}: {exc}", exc) from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JobFailed(f"textUri {uri} is not UTF-8 text: {exc}", permanent=True) from None
        if not text.strip():
            raise JobFailed(f"textUri {uri} holds no text", permanent=True)
        if len(text) > self.settings.max_text_chars:
            raise JobFailed(
                f"textUri {uri} holds {len(text)} characters; the limit is "
                f"{self.settings.max_text_chars}",
                permanent=True,
            )
        return text

    def _voice(self, job: Job) -> Voice:
        """The registered voice, or the job's own clip, prepared (blocking)."""
        voice = job.request.voice
        voices = self.voices
        try:
            if isinstance(voice, str):
                return voices.cached(voice) or voices.get(voice)
            assert job.ref_uri is not None
            return voices.reference(job.ref_uri, voice.ref_text)
        except BadRequest as exc:
            raise JobFailed(str(exc), permanent=True) from None
        except Unavailable as exc:
            raise JobFailed(str(exc), retryable=True) from None

    async def _plan(self, job: Job) -> list[SynthesisRequest]:
        """The whole text as chunk requests, as F5-TTS splits it; chunk i gets seed + i."""
        service = self._speech()
        req, text, voice = job.request, job.text, job.voice
        assert text is not None
        assert voice is not None
        defaults = service.defaults
        params = SynthesisParams(
            speed=req.params.speed,
            nfe_step=req.params.nfe_step or defaults.nfe_step,
            cfg_strength=defaults.cfg_strength
            if req.params.cfg_strength is None
            else req.params.cfg_strength,
        )
        pieces = await asyncio.to_thread(service.engine.split_text, text, voice, params)
        pieces = [p for p in pieces if p.strip()] or [text]
        seed = req.params.seed
        chunks = [
            SynthesisRequest(
                piece,
                voice,
                dataclasses.replace(params, seed=None if seed is None else (seed + i) % 2**32),
            )
            for i, piece in enumerate(pieces)
        ]
        job.chunks_all = len(chunks)
        return chunks

    async def _render(
        self, job: Job, chunks: list[SynthesisRequest], path: str, fmt: str, *, lossless: bool
    ) -> int:
        """Synthesize ``chunks`` into the file at ``path``; returns its length in samples."""
        sink = AudioSink(path, fmt, self._rate(), lossless=lossless)
        try:
            t0 = time.monotonic()
            await self._synthesize(job, chunks, sink)
            t1 = time.monotonic()
            await finish_in_thread(sink.close)
        except BaseException:
            sink.abort()
            raise
        job.status.timings.synthesis_seconds = round(t1 - t0, 3)
        job.status.timings.encode_seconds = round(time.monotonic() - t1, 3)
        return sink.samples

    async def _execute(self, job: Job) -> None:
        status = job.status
        started = time.monotonic()
        await self.gather(job)
        if job.parts > 1:
            await self._execute_part(job, started)
            return
        chunks = await self._plan(job)
        status.chunks_total = len(chunks)
        status.timings.fetch_seconds = round(time.monotonic() - started, 3)
        rate = self._rate()
        fmt = status.format or "wav"
        with tempfile.TemporaryDirectory(prefix="tts-job-") as tmp:
            path = os.path.join(tmp, f"output.{fmt}")
            samples = await self._render(job, chunks, path, fmt, lossless=False)
            seconds = samples / rate
            if samples == 0:
                raise JobFailed("the text produced no audio")
            # From here the job finishes truthfully whatever happens: no cancelling an upload.
            job.publishing = True
            t2 = time.monotonic()
            await finish_in_thread(self._upload, job, path, seconds, swallow_cancel=True)
            status.timings.upload_seconds = round(time.monotonic() - t2, 3)
        assert job.started is not None
        elapsed = time.monotonic() - job.started
        self._succeeded(job, seconds, round(elapsed / seconds, 4) if seconds > 0 else None)
        self.metrics.audio_seconds.labels(fmt).inc(seconds)
        await finish_in_thread(self.records.write_result, job)

    def _succeeded(self, job: Job, seconds: float, rtf: float | None) -> None:
        status = job.status
        status.state = "succeeded"
        status.audio_seconds = round(seconds, 3)
        status.rtf = rtf
        status.progress = 1.0
        status.completed_at = iso_now()
        status.timings.total_seconds = round(time.monotonic() - job.created, 3)
        status.error = None
        status.retryable = False

    # ------------------------------------------------------------------ parts (run-job)

    async def _execute_part(self, job: Job, started: float) -> None:
        """Make this pod's part (unless it exists), then join the output if every part is there."""
        status = job.status
        uri = job_parts.part_uri(job.output, job.part, job.parts)
        if job.part_head is not None:
            log.info(
                "job %s: part %s exists for this request; not synthesizing it again", status.id, uri
            )
            job.chunks_all = int(job.part_head.metadata.get("tts-chunks", "0") or 0)
        else:
            chunks = await self._plan(job)
            lo, hi = job_parts.share(len(chunks), job.part, job.parts)
            status.chunks_total = hi - lo
            status.timings.fetch_seconds = round(time.monotonic() - started, 3)
            rate = self._rate()
            with tempfile.TemporaryDirectory(prefix="tts-part-") as tmp:
                path = os.path.join(tmp, "part.wav")
                samples = await self._render(job, chunks[lo:hi], path, "wav", lossless=True)
                assert job.started is not None
                metadata = {
                    "tts-job-id": status.id,
                    "tts-fingerprint": status.fingerprint or "",
                    "tts-plan": job_parts.plan_digest(chunks),
                    "tts-chunks": str(len(chunks)),
                    "tts-part-chunks": str(hi - lo),
                    "tts-audio-seconds": f"{samples / rate:.3f}",
                    "tts-seconds": f"{time.monotonic() - job.started:.3f}",
                }
                t2 = time.monotonic()
                await finish_in_thread(
                    self._upload_to, job, path, uri, "audio/wav", metadata, "job_part"
                )
                status.timings.upload_seconds = round(time.monotonic() - t2, 3)
            log.info("job %s: part %d of %d uploaded to %s", status.id, job.part, job.parts, uri)
        assert self.objects is not None  # gather() checked it
        parts = await asyncio.to_thread(job_parts.complete_parts, self.objects, job)
        if parts is None:
            # Another pod joins, unless one already did (then our part is a leftover).
            done = await asyncio.to_thread(self.records.result_beside, status.id, job.output)
            if done is not None and done.fingerprint in (None, status.fingerprint):
                await asyncio.to_thread(self.delete_parts, job.output)
                self._adopt(job, done)
                return
            job.joined = False
            status.state = "succeeded"
            status.progress = 1.0
            status.completed_at = iso_now()
            return
        job.publishing = True
        await finish_in_thread(self._join, job, parts, swallow_cancel=True)
        self.metrics.audio_seconds.labels(status.format or "wav").inc(status.audio_seconds or 0.0)
        await finish_in_thread(self.records.write_result, job)
        await asyncio.to_thread(self.delete_parts, job.output)

    def _adopt(self, job: Job, done: JobStatus) -> None:
        """Report the output another pod joined as this job's outcome."""
        status = job.status
        self._succeeded(job, done.audio_seconds or 0.0, done.rtf)
        status.output_uri = done.output_uri or status.output_uri
        job.chunks_all = done.chunks_total or job.chunks_all
        job.joined = True

    def _join(self, job: Job, parts: list[tuple[S3Uri, Head]]) -> None:
        """Download every part, join them with the chunk cross-fade, encode, upload (blocking)."""
        assert self.objects is not None
        status = job.status
        fmt = status.format or "wav"
        rate = self._rate()
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="tts-join-") as tmp:
            files = []
            for i, (uri, _) in enumerate(parts):
                path = os.path.join(tmp, f"{i}.wav")
                try:
                    self.objects.download_file(uri, path)
                except StorageError as exc:
                    done = (
                        self.records.result_beside(status.id, job.output) if exc.missing else None
                    )
                    if done is not None:  # another pod joined and removed the parts meanwhile
                        self._adopt(job, done)
                        return
                    raise JobFailed(f"could not read part {uri}: {exc}", retryable=True) from None
                files.append(path)
            out = os.path.join(tmp, f"output.{fmt}")
            sink = AudioSink(out, fmt, rate)
            try:
                for path in files:
                    sink.push_file(path)
                sink.close()
            except BaseException:
                sink.abort()
                raise
            if sink.samples == 0:
                raise JobFailed("the text produced no audio")
            seconds = sink.samples / rate
            status.timings.encode_seconds = round(time.monotonic() - t0, 3)
            t1 = time.monotonic()
            self._upload(job, out, seconds)
            status.timings.upload_seconds = round(time.monotonic() - t1, 3)
        work = sum(float(head.metadata.get("tts-seconds", "0") or 0) for _, head in parts)
        chunks = parts[0][1].metadata.get("tts-chunks", "0") or "0"
        job.chunks_all = int(chunks)
        status.chunks_total = job.chunks_all
        self._succeeded(job, seconds, round(work / seconds, 4) if seconds > 0 else None)
        job.joined = True
        log.info("job %s: %d parts joined into %s", status.id, len(parts), job.output)

    def delete_parts(self, output: S3Uri) -> None:
        """Remove every part of this output (best effort: a leftover is only storage)."""
        job_parts.delete_parts(self.objects, output)

    async def _synthesize(self, job: Job, chunks: list[SynthesisRequest], sink: AudioSink) -> None:
        """Every chunk through the queue's JOB lane, at most ``window`` at a time, in order."""
        queue = self._speech().queue
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
                await finish_in_thread(sink.push, wave)
                written += 1
                status.chunks_done = written
                status.progress = round(written / n, 4)
        finally:
            for item in pending.values():
                item.future.cancel()
                self._slots.release()

    def _upload(self, job: Job, path: str, seconds: float) -> None:
        """Upload the audio to its final key, retrying; whole or not at all (blocking)."""
        status = job.status
        metadata = {
            "tts-job-id": status.id,
            "tts-audio-seconds": f"{seconds:.3f}",
            "tts-fingerprint": status.fingerprint or "",
        }
        content_type = audio.CONTENT_TYPES[status.format or "wav"]
        self._upload_to(job, path, job.output, content_type, metadata, "job_output")

    def _upload_to(
        self,
        job: Job,
        path: str,
        uri: S3Uri,
        content_type: str,
        metadata: dict[str, str],
        what: str,
    ) -> None:
        if self.objects is None:
            raise JobFailed("this server has no bucket access for the output", permanent=True)
        attempts = max(self.settings.upload_attempts, 1)
        for attempt in range(1, attempts + 1):
            try:
                self.objects.upload_file(path, uri, content_type, metadata=metadata, what=what)
                return
            except StorageError as exc:
                if exc.permanent or attempt == attempts:
                    self._abort_leftovers(uri)
                    raise JobFailed.of_storage(
                        f"uploading the output to {uri} failed after {attempt} attempt(s): {exc}",
                        exc,
                    ) from None
                delay = self.settings.retry_backoff * 2 ** (attempt - 1)
                log.warning(
                    "job %s: upload attempt %d failed (%s); retrying in %.1f s",
                    job.status.id,
                    attempt,
                    exc,
                    delay,
                )
                time.sleep(delay)  # backoff between upload attempts, in the upload's own thread

    def _abort_leftovers(self, uri: S3Uri) -> None:
        """Abort multipart uploads a failed upload left open (a leftover costs only storage)."""
        assert self.objects is not None
        try:
            self.objects.abort_uploads(uri)
        except StorageError as exc:
            log.warning("could not abort the open uploads of %s: %s", uri, exc)
