"""A test double for the queue and router tests: no torch, deterministic audio, counters."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from tts_inference.engine.base import (
    SAMPLE_RATE,
    Audio,
    Engine,
    SynthesisParams,
    SynthesisRequest,
    Voice,
)

#: Seconds of audio per character of text at speed 1.
SECONDS_PER_CHAR = 0.02
TONE_HZ = 220.0


class FakeEngineFailure(RuntimeError):
    """Raised by synthesize_batch when a request's text contains ``fail_on``."""


class FakeEngine(Engine):
    """Speaks a sine tone whose length depends only on the text's length and the speed.

    ``delay`` makes each batch wait up to that many seconds, or until ``release()``;
    ``started`` is set when a batch begins, so a test can wait for it instead of sleeping.
    ``running`` and ``peak_running`` count batches inside synthesize_batch at once.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail_on: str | None = None,
        max_chars: int = 135,
        concurrent_batches: int = 1,
    ) -> None:
        self.concurrent_batches = concurrent_batches
        self.running = 0
        self.peak_running = 0
        self._running = threading.Condition()
        self.delay = delay
        self.fail_on = fail_on
        self.max_chars = max_chars
        self.loads = 0
        self.unloads = 0
        self.calls = 0
        self.batches: list[int] = []
        self.requests: list[SynthesisRequest] = []
        self.started = threading.Event()
        self._released = threading.Event()

    @property
    def device(self) -> str:
        return "fake"

    def load(self) -> None:
        self.loads += 1

    def unload(self) -> None:
        self.unloads += 1

    def release(self) -> None:
        """End the current and every later ``delay`` wait at once."""
        self._released.set()

    @staticmethod
    def samples_for(text: str, speed: float = 1.0) -> int:
        """The length of the audio synthesize_batch returns for ``text``."""
        return max(1, math.ceil(len(text) * SECONDS_PER_CHAR / speed * SAMPLE_RATE))

    def wait_running(self, count: int, timeout: float = 30.0) -> bool:
        """Block until ``count`` batches are inside synthesize_batch at once."""
        with self._running:
            return self._running.wait_for(lambda: self.running >= count, timeout)

    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> list[Audio]:
        with self._running:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            self._running.notify_all()
        try:
            return self._synthesize(requests)
        finally:
            with self._running:
                self.running -= 1

    def _synthesize(self, requests: Sequence[SynthesisRequest]) -> list[Audio]:
        self.calls += 1
        self.batches.append(len(requests))
        self.requests.extend(requests)
        self.started.set()
        if self.delay > 0:
            self._released.wait(self.delay)
        if self.fail_on is not None:
            for request in requests:
                if self.fail_on in request.text:
                    raise FakeEngineFailure(f"fake failure on {request.text!r}")
        out: list[Audio] = []
        for request in requests:
            n = self.samples_for(request.text, request.params.speed)
            t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
            out.append((0.1 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32))
        return out

    def chunk_budget(self, voice: Voice, params: SynthesisParams) -> int:
        """``max_chars`` bytes of text per chunk, whatever the voice and speed."""
        return self.max_chars

    def info(self) -> dict[str, Any]:
        return {"device": self.device, "model": "fake", "dtype": "float32", "attn_backend": "none"}
