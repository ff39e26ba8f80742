"""AudioSink: a job's cross-faded chunks written into a file as they arrive."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

from tts_inference import audio
from tts_inference.engine.base import Audio
from tts_inference.jobs.job import JobFailed

log = logging.getLogger("tts_inference.jobs")

JOIN_BLOCK = 1 << 20  # samples read from a part at a time while joining


class AudioSink:
    """Cross-faded chunks into a file as they arrive: wav/flac by soundfile, mp3/opus by ffmpeg.

    ``lossless`` (wav only): float32 samples, not clipped, for a part that is joined later.
    """

    def __init__(self, path: str, fmt: str, sample_rate: int, *, lossless: bool = False) -> None:
        self.joiner = audio.CrossFader(sample_rate)
        self.sample_rate = sample_rate
        self.samples = 0
        self.lossless = lossless and fmt == "wav"
        self._file: Any = None
        self._encoder: audio.StreamEncoder | None = None
        self._out: Any = None
        if fmt in ("wav", "flac"):
            subtype = "FLOAT" if self.lossless else "PCM_16"
            self._file = sf.SoundFile(
                path, "w", sample_rate, 1, format=fmt.upper(), subtype=subtype
            )
        else:
            self._encoder = audio.open_stream(fmt, sample_rate)
            self._out = open(path, "wb")  # noqa: SIM115 - closed in close()/abort()

    def _write(self, samples: Audio) -> None:
        if not len(samples):
            return
        if not self.lossless:
            samples = np.clip(samples, -1.0, 1.0)
        samples = samples.astype(np.float32, copy=False)
        if self._file is not None:
            self._file.write(samples)
        elif self._encoder is not None:
            self._out.write(self._encoder.feed(samples))
        self.samples += len(samples)

    def push(self, wave: Audio, *, continues: bool = False) -> None:
        """The next chunk, cross-faded with what came before; or, with ``continues``, more of
        the current one (no fade)."""
        self._write(self.joiner.extend(wave) if continues else self.joiner.push(wave))

    def push_file(self, path: str) -> None:
        """A whole wav file as one chunk, read in blocks (memory stays flat). Blocking."""
        with sf.SoundFile(path) as part:
            if part.samplerate != self.sample_rate or part.channels != 1:
                raise JobFailed(
                    f"a part is {part.channels} channel(s) at {part.samplerate} Hz; "
                    f"expected mono at {self.sample_rate} Hz",
                    retryable=True,
                )
            # The fade with what came before needs the part's first ``fade`` samples at once.
            head: list[Audio] = []
            started = False
            for block in part.blocks(blocksize=JOIN_BLOCK, dtype="float32"):
                samples = np.asarray(block, dtype=np.float32).reshape(-1)
                if started:
                    self.push(samples, continues=True)
                    continue
                head.append(samples)
                if sum(len(h) for h in head) >= self.joiner.fade:
                    self.push(np.concatenate(head))
                    started = True
            if not started and head:
                self.push(np.concatenate(head))

    def close(self) -> None:
        self._write(self.joiner.flush())
        if self._file is not None:
            self._file.close()
        elif self._encoder is not None:
            self._out.write(self._encoder.close())
            self._out.close()

    def abort(self) -> None:
        """Close what is open after a failure; a close that fails too is logged, not raised,
        so the job's own error is the one reported."""
        try:
            if self._file is not None:
                self._file.close()
            if self._encoder is not None:
                self._encoder.abort()
                self._out.close()
        except OSError as exc:
            log.warning("closing a failed job's audio: %s", exc)
