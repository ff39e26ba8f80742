"""Speech synthesis as the HTTP layer needs it: validate, split, enqueue, join, encode.

Validation happens before any audio is produced, so a bad request is a 4xx
and never a broken stream. Long text is split as F5-TTS splits it; the chunks
go through the shared batching queue and are joined with F5-TTS's cross-fade.
With streaming, the first chunk is enqueued alone so its audio can leave
before the rest is synthesized.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from pydantic import BaseModel

from tts_inference import audio
from tts_inference.engine.base import Audio, Engine, SynthesisParams, SynthesisRequest
from tts_inference.errors import BadRequest, error_status, error_type
from tts_inference.metrics import ServerMetrics
from tts_inference.protocol import (
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechError,
    SpeechRequest,
    SpeechUsage,
    error_payload,
)
from tts_inference.queue import LIVE, BatchQueue
from tts_inference.voices import VoiceStore

__all__ = [
    "BadRequest",
    "Defaults",
    "SpeechService",
    "StreamStats",
    "VoiceStore",
    "cancel_on_disconnect",
]

log = logging.getLogger("tts_inference.serving")

#: Audio samples per mel frame: the unit of a speech stream's output tokens.
FRAME_SAMPLES = 256


@dataclass(frozen=True)
class Defaults:
    nfe_step: int = 32
    cfg_strength: float = 2.0
    max_input_chars: int = 4096
    request_timeout: float = 300.0


@dataclass
class StreamStats:
    samples: int = 0


class SpeechService:
    def __init__(
        self,
        engine: Engine,
        queue: BatchQueue,
        voices: VoiceStore,
        metrics: ServerMetrics,
        defaults: Defaults,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.voices = voices
        self.metrics = metrics
        self.defaults = defaults

    async def prepare(self, req: SpeechRequest) -> tuple[list[SynthesisRequest], str]:
        """Validate and split; raises BadRequest. Returns the chunk requests and the format.

        The voice comes from memory when it can, else from the cache volume or the
        bucket in a worker thread, so a voice fetch never stalls the event loop.
        """
        text = req.input.strip()
        if not text:
            raise BadRequest("input is empty: give the text to speak", param="input")
        if len(text) > self.defaults.max_input_chars:
            raise BadRequest(
                f"input is {len(text)} characters; the limit is {self.defaults.max_input_chars} "
                "(use the jobs API for long texts)",
                param="input",
            )
        voice = self.voices.cached(req.voice_name)
        if voice is None:
            voice = await asyncio.to_thread(self.voices.get, req.voice_name)
        params = SynthesisParams(
            speed=req.speed,
            nfe_step=req.nfe_step or self.defaults.nfe_step,
            cfg_strength=self.defaults.cfg_strength
            if req.cfg_strength is None
            else req.cfg_strength,
            seed=req.seed,
        )
        chunks = self.engine.split_text(text, voice, params)
        if len(chunks) > 1 or req.stream_format is not None:
            # Streamed: a short first chunk, so the first audio leaves early.
            chunks = self.engine.split_text(text, voice, params, stream=True)
        if not chunks:
            raise BadRequest(
                "input has nothing to speak: it holds only spaces and control characters",
                param="input",
            )
        if ignored := req.ignored_fields():
            log.info("ignoring fields this server does not use: %s", ", ".join(sorted(ignored)))
        return [SynthesisRequest(chunk, voice, params) for chunk in chunks], req.audio_format

    async def synthesize(self, chunks: list[SynthesisRequest]) -> Audio:
        """All chunks at once (best throughput), joined with the cross-fade."""
        items = [
            self.queue.submit(c, priority=LIVE, timeout=self.defaults.request_timeout)
            for c in chunks
        ]
        try:
            waves = [await item.future for item in items]
        finally:
            for item in items:
                item.future.cancel()
        return audio.crossfade(waves, self.engine.sample_rate)

    async def stream(
        self,
        chunks: list[SynthesisRequest],
        fmt: str,
        on_first_byte: Callable[[], None],
        stats: StreamStats,
    ) -> AsyncGenerator[bytes, None]:
        """Encoded audio as each chunk is ready.

        The first chunk runs alone, and the rest are queued once it is done: on a GPU they
        would wait for its batch anyway, and on a CPU running batches side by side they
        would take cores from it, so its audio would leave no sooner than theirs.
        """
        timeout = self.defaults.request_timeout
        items = [self.queue.submit(chunks[0], priority=LIVE, timeout=timeout)]
        joiner = audio.CrossFader(self.engine.sample_rate)
        encoder = audio.open_stream(fmt, self.engine.sample_rate)
        sent = False
        try:
            for index in range(len(chunks)):
                wave = await items[index].future
                if index == 0:
                    items += [
                        self.queue.submit(c, priority=LIVE, timeout=timeout) for c in chunks[1:]
                    ]
                joined = joiner.push(wave)
                stats.samples += len(joined)
                data = encoder.feed(joined)
                if data:
                    if not sent:
                        on_first_byte()
                        sent = True
                    yield data
            tail = joiner.flush()
            stats.samples += len(tail)
            data = encoder.feed(tail) + encoder.close()
            if data:
                if not sent:
                    on_first_byte()
                yield data
        finally:
            encoder.abort()
            for item in items:
                item.future.cancel()

    async def events(
        self,
        chunks: list[SynthesisRequest],
        fmt: str,
        on_first_byte: Callable[[], None],
        stats: StreamStats,
        input_tokens: int,
    ) -> AsyncGenerator[bytes, None]:
        """OpenAI's speech stream events: one speech.audio.delta per piece of encoded audio,
        then speech.audio.done with usage; a failure once an event left is an error event.
        """
        began = False
        try:
            async for data in self.stream(chunks, fmt, on_first_byte, stats):
                yield sse_event(SpeechAudioDelta(audio=base64.b64encode(data).decode("ascii")))
                began = True
        except Exception as exc:
            if not began:
                raise  # no event left yet: the caller answers with an error status
            log.error("speech stream failed: %s: %s", type(exc).__name__, exc)
            status, message = error_status(exc)
            body = error_payload(message, type_=error_type(status))
            yield sse_event(SpeechError(**body))
            return
        frames = stats.samples // FRAME_SAMPLES
        usage = SpeechUsage(
            input_tokens=input_tokens, output_tokens=frames, total_tokens=input_tokens + frames
        )
        yield sse_event(SpeechAudioDone(usage=usage))

    def record(self, fmt: str, wave_seconds: float, started: float) -> None:
        elapsed = time.monotonic() - started
        self.metrics.audio_seconds.labels(fmt).inc(wave_seconds)
        if wave_seconds > 0:
            self.metrics.rtf.observe(elapsed / wave_seconds)


def sse_event(event: BaseModel) -> bytes:
    """One server-sent event: its JSON on one data line, then a blank line."""
    return b"data: " + event.model_dump_json().encode() + b"\n\n"


async def cancel_on_disconnect(
    is_disconnected: Callable[[], object], task: asyncio.Task[Audio]
) -> None:
    """Cancel ``task`` when the client goes away, so its queued work is dropped."""
    while not task.done():
        disconnected = is_disconnected()
        if asyncio.iscoroutine(disconnected):
            disconnected = await disconnected
        if disconnected:
            task.cancel()
            return
        await asyncio.sleep(0.1)  # polling the connection state, as Starlette offers no event
