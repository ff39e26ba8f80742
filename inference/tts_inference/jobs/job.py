"""A job as the manager holds it, its settings, its failure, and the thread helper jobs share."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from tts_inference.engine.base import Voice
from tts_inference.protocol import TERMINAL_STATES, JobRequest, JobStatus
from tts_inference.sizes import MIB
from tts_inference.storage.bucket import Head, S3Uri, StorageError

T = TypeVar("T")


def iso_now(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def epoch(iso: str | None) -> float | None:
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
    """Why a job failed, in words for its status; ``retryable`` when running it again may work;
    ``permanent`` when the input is wrong (a bad or missing object, an unknown voice, empty
    text): no run of the same request can succeed (run-job exits 2)."""

    def __init__(self, message: str, *, retryable: bool = False, permanent: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.permanent = permanent

    @classmethod
    def of_storage(cls, message: str, exc: StorageError) -> JobFailed:
        """A bucket failure: permanent when no retry can fix it (denied, missing), else retryable."""
        return cls(message, retryable=not exc.permanent, permanent=exc.permanent)


@dataclass
class Job:
    status: JobStatus
    request: JobRequest
    output: S3Uri
    text_uri: S3Uri | None
    ref_uri: S3Uri | None = None  # the job's own reference clip
    part: int = 0  # this pod's share of a job split over ``parts`` pods (run-job)
    parts: int = 1
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    publishing: bool = False
    seq: int = 0
    written_seq: int = -1
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    # gathered inputs (run-job gathers them before it loads the model)
    text: str | None = None
    voice: Voice | None = None
    part_checked: bool = False
    part_head: Head | None = None  # this part, already in the bucket for this request
    # the outcome
    permanent: bool = False
    joined: bool = True  # False: this part is uploaded, another pod joins the output
    chunks_all: int = 0  # chunks of the whole text (every part)

    @property
    def terminal(self) -> bool:
        return self.status.state in TERMINAL_STATES


async def finish_in_thread(fn: Callable[..., T], *args: Any, swallow_cancel: bool = False) -> T:
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
