"""Where a job's state lives in the bucket, so any replica, or a restart, finds it by id.

- The index record ``<jobs-uri>/<id>.json``: written at each state change and
  every heartbeat while the job runs; a running record whose heartbeat is
  older than ``stale_after`` is reported failed and retryable.
- The result record ``<output key>.tts-job.json``, written beside the audio
  after the audio exists; and the audio's own metadata (``tts-job-id``), so a
  job whose output exists is reported succeeded, never failed.
- Cancel markers ``<jobs-uri>/<id>.cancel``: a DELETE on one replica asks the
  replica running the job to stop; its heartbeat sees the marker.
- Job ids: derived from the Idempotency-Key, the same on every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid

from tts_inference.errors import Unavailable
from tts_inference.jobs.job import Job, epoch, finish_in_thread, iso_now
from tts_inference.protocol import TERMINAL_STATES, JobStatus
from tts_inference.sizes import MIB
from tts_inference.storage.bucket import ObjectStore, S3Uri, StorageError

log = logging.getLogger("tts_inference.jobs")

RESULT_SUFFIX = ".tts-job.json"


def job_id_for(key: str | None) -> str:
    """The job id: derived from the idempotency key (the same on every replica), else random."""
    if key is None:
        return uuid.uuid4().hex
    return hashlib.sha256(f"tts-job\0{key}".encode()).hexdigest()[:32]


def valid_job_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


def result_uri(output: S3Uri) -> S3Uri:
    """The result record beside an output."""
    return S3Uri(output.bucket, output.key + RESULT_SUFFIX)


class Records:
    """The records of jobs under ``prefix`` (None: no index, only result records) in the
    bucket ``objects`` reaches (None: no bucket, nothing is recorded)."""

    def __init__(
        self, objects: ObjectStore | None, prefix: S3Uri | None, stale_after: float
    ) -> None:
        self.objects = objects
        self.prefix = prefix
        self.stale_after = stale_after

    @property
    def indexed(self) -> bool:
        return self.prefix is not None and self.objects is not None

    def index_uri(self, job_id: str) -> S3Uri | None:
        return self.prefix.join(f"{job_id}.json") if self.prefix is not None else None

    def cancel_uri(self, job_id: str) -> S3Uri | None:
        return self.prefix.join(f"{job_id}.cancel") if self.prefix is not None else None

    async def save(self, job: Job) -> None:
        """Write the job's record (latest state wins; never a stale state over a newer one)."""
        uri = self.index_uri(job.status.id)
        if uri is None or self.objects is None:
            return
        job.status.updated_at = iso_now()
        job.seq += 1
        seq, data = job.seq, job.status.model_dump_json(by_alias=True, indent=1).encode()
        objects = self.objects

        def write() -> None:
            with job.write_lock:
                if seq <= job.written_seq:
                    return
                try:
                    objects.put_bytes(uri, data, "application/json", what="record")
                except StorageError as exc:
                    log.warning("could not write the record of job %s: %s", job.status.id, exc)
                    return
                job.written_seq = seq

        await finish_in_thread(write)

    def lookup(self, job_id: str, output: S3Uri | None) -> JobStatus | None:
        """What the bucket says about a job this process does not hold (blocking)."""
        record: JobStatus | None = None
        uri = self.index_uri(job_id)
        objects = self.objects
        if uri is not None and objects is not None:
            try:
                record = JobStatus.model_validate_json(objects.get_bytes(uri, 1 * MIB))
            except StorageError as exc:
                if not exc.missing:
                    raise Unavailable(f"could not read the record of job {job_id}: {exc}") from None
            except ValueError as exc:
                log.warning("the record of job %s is unreadable: %s", job_id, exc)
        if record is not None and record.state in TERMINAL_STATES:
            return record
        if record is not None and record.output_uri:
            output = S3Uri.parse(record.output_uri)
        result = self.result_beside(job_id, output) if output is not None else None
        if result is not None:
            return result
        if record is None:
            return None
        age = time.time() - (epoch(record.updated_at) or 0.0)
        if age > self.stale_after:
            record.state = "failed"
            record.retryable = True
            record.error = (
                f"interrupted: {record.owner or 'the server running it'} sent no heartbeat for "
                f"{age:.0f} s; POST it again with the same Idempotency-Key to run it again"
            )
        return record

    def result_beside(self, job_id: str, output: S3Uri) -> JobStatus | None:
        """A succeeded job's status from its output: the result record, or the audio's metadata."""
        if self.objects is None:
            return None
        try:
            raw = self.objects.get_bytes(S3Uri(output.bucket, output.key + RESULT_SUFFIX), MIB)
            result = JobStatus.model_validate_json(raw)
            if result.id == job_id and result.state == "succeeded":
                return result
        except StorageError as exc:
            if not exc.missing:
                raise Unavailable(f"could not read the result of job {job_id}: {exc}") from None
        except ValueError as exc:
            # A result record that does not parse: the audio's own metadata decides below.
            log.warning(
                "job %s: the result record beside %s is unreadable: %s", job_id, output, exc
            )
        try:
            head = self.objects.head(output)
        except StorageError as exc:
            raise Unavailable(f"could not check the output of job {job_id}: {exc}") from None
        if head is not None and head.metadata.get("tts-job-id") == job_id:
            seconds = head.metadata.get("tts-audio-seconds")
            return JobStatus(
                id=job_id,
                state="succeeded",
                output_uri=str(output),
                audio_seconds=float(seconds) if seconds else None,
                progress=1.0,
                fingerprint=head.metadata.get("tts-fingerprint"),
            )
        return None

    def write_result(self, job: Job) -> None:
        """The result record beside the audio (after the audio exists). Blocking, best effort."""
        if self.objects is None:
            return
        uri = S3Uri(job.output.bucket, job.output.key + RESULT_SUFFIX)
        data = job.status.model_dump_json(by_alias=True, indent=1).encode()
        try:
            self.objects.put_bytes(uri, data, "application/json", what="record")
        except StorageError as exc:
            log.warning("could not write the result record of job %s: %s", job.status.id, exc)

    async def ask_cancel(self, job_id: str) -> None:
        """Leave a cancel marker for the replica running ``job_id``; Unavailable on failure."""
        marker = self.cancel_uri(job_id)
        if marker is None or self.objects is None:
            return
        try:
            await asyncio.to_thread(
                self.objects.put_bytes, marker, b"cancel", "text/plain", what="record"
            )
        except StorageError as exc:
            raise Unavailable(
                f"could not ask the server running {job_id} to cancel: {exc}"
            ) from None

    async def cancel_asked(self, job_id: str) -> bool:
        """Whether a cancel marker waits for ``job_id`` (False when the bucket cannot say)."""
        marker = self.cancel_uri(job_id)
        if marker is None or self.objects is None:
            return False
        try:
            return await asyncio.to_thread(self.objects.head, marker) is not None
        except StorageError as exc:
            log.warning("job %s: could not look for a cancel marker: %s", job_id, exc)
            return False

    async def clear_cancel(self, job_id: str) -> None:
        """Remove a cancel marker an earlier run left (best effort, logged)."""
        marker = self.cancel_uri(job_id)
        if marker is None or self.objects is None:
            return
        try:
            await asyncio.to_thread(self.objects.delete, marker)
        except StorageError as exc:
            log.warning("job %s: could not remove an old cancel marker: %s", job_id, exc)
