"""The batch queue on its own: how many batches run at once on the one engine."""

from __future__ import annotations

import asyncio

import numpy as np

from tts_inference.engine.base import SAMPLE_RATE, SynthesisParams, SynthesisRequest, Voice
from tts_inference.engine.fake import FakeEngine
from tts_inference.metrics import ServerMetrics
from tts_inference.queue import BatchQueue

VOICE = Voice("test", np.zeros(SAMPLE_RATE, dtype=np.float32), "Test.")


def _request(i: int) -> SynthesisRequest:
    return SynthesisRequest("word " * (i + 1), VOICE, SynthesisParams(seed=i))


def _gauge(metrics: ServerMetrics) -> float:
    value: float = metrics.running._value.get()
    return value


async def _run_three(engine: FakeEngine) -> tuple[int, float, list[int]]:
    """Three one-request batches; returns how many ran at once, the gauge then, the lengths."""
    metrics = ServerMetrics()
    queue = BatchQueue(engine, metrics, max_batch=1, max_wait=0)
    queue.start()
    try:
        items = [queue.submit(_request(i)) for i in range(3)]
        assert await asyncio.to_thread(engine.wait_running, engine.concurrent_batches)
        at_once, gauge = engine.running, _gauge(metrics)
        engine.release()
        audio = await asyncio.gather(*(item.future for item in items))
        assert _gauge(metrics) == 0
        return at_once, gauge, [len(a) for a in audio]
    finally:
        await queue.stop()


def test_one_batch_at_a_time_by_default() -> None:
    engine = FakeEngine(delay=30)
    at_once, gauge, lengths = asyncio.run(_run_three(engine))
    assert (at_once, gauge, engine.peak_running) == (1, 1, 1)
    assert lengths == [FakeEngine.samples_for(_request(i).text) for i in range(3)]


def test_an_engine_that_allows_two_runs_two_batches_at_once_and_no_more() -> None:
    engine = FakeEngine(delay=30, concurrent_batches=2)
    at_once, gauge, lengths = asyncio.run(_run_three(engine))
    # Two batches in the engine together, the third waits for a free slot.
    assert (at_once, gauge, engine.peak_running) == (2, 2, 2)
    assert engine.batches == [1, 1, 1]
    assert lengths == [FakeEngine.samples_for(_request(i).text) for i in range(3)]
