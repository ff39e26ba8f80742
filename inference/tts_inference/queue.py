"""One bounded queue that batches synthesis requests onto the one device.

Every request (one text chunk) gets a future. A single consumer takes up to
``max_batch`` requests, waiting at most ``max_wait`` for the batch to fill, and
runs them on the engine in a dedicated thread, so there is exactly one model
copy and one stream of work on the device (a CPU engine may ask for more than
one batch at once through ``Engine.concurrent_batches``: they still share the
one model, each batch in its own thread). Live requests go before job work.
Requests whose client went away (future cancelled) or whose deadline passed
are dropped before they cost device time. A full queue refuses at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tts_inference.engine.base import Audio, Engine, SynthesisRequest
from tts_inference.errors import DeadlineExceeded, QueueFull
from tts_inference.metrics import DROP_CANCELLED, DROP_DEADLINE, ServerMetrics

log = logging.getLogger("tts_inference.queue")

LIVE = 0
JOB = 1


@dataclass
class _Item:
    request: SynthesisRequest
    future: asyncio.Future[Audio]
    enqueued: float
    deadline: float | None
    started: asyncio.Event = field(default_factory=asyncio.Event)


class BatchQueue:
    def __init__(
        self,
        engine: Engine,
        metrics: ServerMetrics,
        *,
        max_batch: int = 8,
        max_wait: float = 0.01,
        max_queue: int = 64,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._lanes: tuple[deque[_Item], deque[_Item]] = (deque(), deque())
        self._wakeup = asyncio.Event()
        self.concurrent_batches = max(1, engine.concurrent_batches)
        self._executor = ThreadPoolExecutor(
            max_workers=self.concurrent_batches, thread_name_prefix="device"
        )
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ producer side

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes)

    def submit(
        self, request: SynthesisRequest, *, priority: int = LIVE, timeout: float | None = None
    ) -> _Item:
        """Enqueue one request; raises QueueFull. Await ``item.future`` for the audio."""
        if len(self) >= self.max_queue:
            self.metrics.rejected.inc()
            raise QueueFull(f"the queue holds {self.max_queue} requests; retry shortly")
        now = time.monotonic()
        item = _Item(
            request,
            asyncio.get_running_loop().create_future(),
            now,
            now + timeout if timeout else None,
        )
        self._lanes[priority].append(item)
        self.metrics.queue_depth.set(len(self))
        self._wakeup.set()
        return item

    async def synthesize(
        self, request: SynthesisRequest, *, priority: int = LIVE, timeout: float | None = None
    ) -> Audio:
        item = self.submit(request, priority=priority, timeout=timeout)
        return await item.future

    # ------------------------------------------------------------------ consumer side

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-queue")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._batches):
            task.cancel()
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
        for lane in self._lanes:
            while lane:
                item = lane.popleft()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    def _take(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        for lane in self._lanes:
            while lane and len(batch) < self.max_batch:
                item = lane.popleft()
                if item.future.done():  # cancelled: the client went away
                    self.metrics.dropped.labels(DROP_CANCELLED).inc()
                elif item.deadline is not None and now > item.deadline:
                    self.metrics.dropped.labels(DROP_DEADLINE).inc()
                    item.future.set_exception(
                        DeadlineExceeded("the request waited past its deadline")
                    )
                else:
                    batch.append(item)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if len(self._batches) >= self.concurrent_batches:
                await asyncio.wait(self._batches, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not len(self):
                self._wakeup.clear()
                await self._wakeup.wait()
            batch: list[_Item] = []
            self._take(batch)
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch and (left := deadline - loop.time()) > 0:
                self._wakeup.clear()
                if not len(self):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), left)
                self._take(batch)
            self.metrics.queue_depth.set(len(self))
            if not batch:
                continue
            task = loop.create_task(self._execute(batch), name="batch")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _execute(self, batch: Sequence[_Item]) -> None:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        for item in batch:
            self.metrics.queue_wait_seconds.observe(start - item.enqueued)
            item.started.set()
        self.metrics.batch_size.observe(len(batch))
        self.metrics.running.inc(len(batch))
        try:
            results = await loop.run_in_executor(
                self._executor, self.engine.synthesize_batch, [item.request for item in batch]
            )
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the engine returned {len(results)} results for {len(batch)} requests"
                )
        except Exception as exc:  # the whole batch fails together, each caller hears why
            log.exception("batch of %d failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            for item, audio in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(audio)
        finally:
            self.metrics.running.dec(len(batch))
            self.metrics.batch_seconds.observe(time.monotonic() - start)
