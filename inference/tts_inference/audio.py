"""Audio encoding, streaming encoding, decoding and cross-fading for the TTS server.

Everything here works on float32 mono numpy arrays in [-1, 1]; nothing imports
torch. The formats are the ones OpenAI's speech API offers (``FORMATS``):

- ``pcm``: raw 16-bit signed little-endian mono at 24 kHz, like OpenAI's;
  audio at another rate is resampled to 24 kHz by ffmpeg.
- ``wav``: 16-bit PCM RIFF at the audio's rate. Streamed wav carries
  0xFFFFFFFF in its RIFF and data sizes, the length being unknown.
- ``flac``: via soundfile for whole files, ffmpeg when streaming.
- ``mp3`` (libmp3lame), ``opus`` (libopus in Ogg) and ``aac`` (native
  encoder, ADTS): one ffmpeg process per call, data through pipes.

``decode`` turns uploaded audio (wav, flac, mp3, ogg/opus, m4a, ...) into
float32 mono at a target rate through ffmpeg, raising ``AudioError`` with
ffmpeg's reason when the bytes are not audio.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from types import MappingProxyType, TracebackType
from typing import Final

import numpy as np
import numpy.typing as npt
import soundfile as sf  # type: ignore[import-untyped]

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "PCM_SAMPLE_RATE",
    "AudioError",
    "CrossFader",
    "StreamEncoder",
    "crossfade",
    "decode",
    "duration_seconds",
    "encode",
    "open_stream",
]

FloatArray = npt.NDArray[np.float32]

FORMATS: Final[tuple[str, ...]] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

CONTENT_TYPES: Final = MappingProxyType(
    {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }
)

PCM_SAMPLE_RATE: Final = 24000
"""The rate of the ``pcm`` format, as OpenAI's: raw s16le mono at 24 kHz."""

CROSS_FADE_SECONDS: Final = 0.15
"""How long two chunks of one text overlap where they are joined (f5-tts's default)."""

FFMPEG_TIMEOUT: Final = 300.0
"""Seconds one ffmpeg run (or a stream's final flush) may take before it is killed."""

_UNKNOWN_SIZE: Final = 0xFFFFFFFF
_WAV_HEADER_BYTES: Final = 44
_STDERR_KEEP: Final = 8192
_READ_BYTES: Final = 65536

# The rates each encoder accepts; audio at another rate is resampled to the
# nearest accepted rate above it (or the highest one).
_ENCODER_RATES: Final[dict[str, tuple[int, ...]]] = {
    "mp3": (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000),
    "opus": (8000, 12000, 16000, 24000, 48000),
    "aac": (
        7350,
        8000,
        11025,
        12000,
        16000,
        22050,
        24000,
        32000,
        44100,
        48000,
        64000,
        88200,
        96000,
    ),
    "pcm": (PCM_SAMPLE_RATE,),
}

# Encoder and muxer arguments per format, for the ffmpeg paths.
_CODEC_ARGS: Final[dict[str, tuple[str, ...]]] = {
    # No Xing/LAME header (it cannot be rewritten on a pipe) and no ID3 tag, so
    # the stream is plain MPEG frames from its first byte.
    "mp3": (
        "-c:a",
        "libmp3lame",
        "-b:a",
        "64k",
        "-write_xing",
        "0",
        "-id3v2_version",
        "0",
        "-f",
        "mp3",
    ),
    "opus": ("-c:a", "libopus", "-b:a", "48k", "-f", "ogg"),
    "aac": ("-c:a", "aac", "-b:a", "64k", "-f", "adts"),
    "flac": ("-c:a", "flac", "-f", "flac"),
    "pcm": ("-c:a", "pcm_s16le", "-f", "s16le"),
}

# Extra output arguments while streaming: flush each packet as it is muxed,
# and cut Ogg pages every 100 ms rather than every second.
_STREAM_ARGS: Final[dict[str, tuple[str, ...]]] = {
    "opus": ("-page_duration", "100000"),
}


class AudioError(ValueError):
    """Audio that cannot be encoded or decoded, an unknown format, or no ffmpeg."""


def duration_seconds(n_samples: int, sample_rate: int) -> float:
    """The length in seconds of ``n_samples`` samples at ``sample_rate``."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return n_samples / sample_rate


def _check_format(fmt: str) -> str:
    name = fmt.strip().lower() if isinstance(fmt, str) else fmt
    if name not in FORMATS:
        raise AudioError(f"unknown audio format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return name


def _check_rate(sample_rate: int) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise AudioError(f"sample rate must be a positive integer, got {sample_rate!r}")


def _pcm16(audio: npt.ArrayLike) -> bytes:
    """float mono in [-1, 1] as raw 16-bit signed little-endian bytes (clipped, x32767)."""
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        squeezed = np.squeeze(samples)
        if squeezed.ndim > 1:
            raise AudioError(f"expected mono audio (one dimension), got shape {samples.shape}")
        samples = squeezed.reshape(-1)
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    scaled: npt.NDArray[np.float32] = np.rint(np.clip(samples, -1.0, 1.0) * np.float32(32767.0))
    return scaled.astype("<i2").tobytes()


def _wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte RIFF header for 16-bit mono PCM; ``None`` means an unknown length."""
    if data_bytes is None or data_bytes > _UNKNOWN_SIZE - 36:
        riff_size = data_size = _UNKNOWN_SIZE
    else:
        riff_size, data_size = 36 + data_bytes, data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        1,  # channels
        sample_rate,
        sample_rate * 2,  # byte rate
        2,  # block align
        16,  # bits per sample
        b"data",
        data_size,
    )


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise AudioError(
            "ffmpeg is not installed or not on PATH: it is needed for mp3, opus and aac "
            "output and for decoding uploads (install it, e.g. `apt-get install ffmpeg`)"
        )
    return path


def _output_rate(fmt: str, sample_rate: int) -> int | None:
    """The rate ffmpeg must resample to for ``fmt``, or None where the input rate is accepted."""
    rates = _ENCODER_RATES.get(fmt)
    if rates is None or sample_rate in rates:
        return None
    higher = [rate for rate in rates if rate >= sample_rate]
    return min(higher) if higher else max(rates)


def _needs_ffmpeg(fmt: str, sample_rate: int, *, streaming: bool) -> bool:
    if fmt in ("mp3", "opus", "aac"):
        return True
    if fmt == "flac":
        return streaming
    if fmt == "pcm":
        return sample_rate != PCM_SAMPLE_RATE
    return False


def _encode_command(fmt: str, sample_rate: int, *, streaming: bool) -> list[str]:
    command = [
        _ffmpeg(),
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "error",
        # Raw input needs no probing: start encoding with the first bytes.
        "-probesize",
        "32",
        "-analyzeduration",
        "0",
        "-f",
        "s16le",
        "-ar",
        str(sample_rate),
        "-ac",
        "1",
        "-i",
        "pipe:0",
        "-map_metadata",
        "-1",
        *_CODEC_ARGS[fmt],
    ]
    rate = _output_rate(fmt, sample_rate)
    if rate is not None:
        command += ["-ar", str(rate)]
    if streaming:
        command += [*_STREAM_ARGS.get(fmt, ()), "-flush_packets", "1"]
    command.append("pipe:1")
    return command


def _reason(stderr: bytes, *replace: str) -> str:
    """ffmpeg's last complaint, made readable."""
    text = stderr.decode("utf-8", "replace")
    for old in replace:
        if old:
            text = text.replace(old, "input")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("To ignore this")]
    if not lines:
        return "ffmpeg gave no reason"
    if any("matches no streams" in line for line in lines):
        return "no audio stream found (the data is not a recognised audio file)"
    return "; ".join(lines[-3:])


def encode(audio: npt.ArrayLike, sample_rate: int, fmt: str) -> bytes:
    """A whole audio file in ``fmt`` (one of ``FORMATS``) of float mono ``audio`` in [-1, 1]."""
    fmt = _check_format(fmt)
    _check_rate(sample_rate)
    pcm = _pcm16(audio)
    if fmt == "pcm" and sample_rate == PCM_SAMPLE_RATE:
        return pcm
    if fmt == "wav":
        return _wav_header(sample_rate, len(pcm)) + pcm
    if fmt == "flac":
        buffer = io.BytesIO()
        samples = np.frombuffer(pcm, dtype="<i2")
        sf.write(buffer, samples, sample_rate, format="FLAC", subtype="PCM_16")
        return buffer.getvalue()
    command = _encode_command(fmt, sample_rate, streaming=False)
    try:
        result = subprocess.run(command, input=pcm, capture_output=True, timeout=FFMPEG_TIMEOUT)
    except FileNotFoundError as exc:
        raise AudioError(f"ffmpeg could not be started ({exc}): install ffmpeg") from exc
    except subprocess.TimeoutExpired as exc:
        raise AudioError(f"ffmpeg took longer than {FFMPEG_TIMEOUT:.0f} s to encode {fmt}") from exc
    if result.returncode != 0 or (pcm and not result.stdout):
        raise AudioError(f"ffmpeg could not encode {fmt}: {_reason(result.stderr)}")
    return result.stdout


class StreamEncoder:
    """Encodes audio chunk by chunk: ``feed`` returns the bytes ready now, ``close`` the rest.

    pcm and wav bytes come back from each ``feed`` at once (wav's first feed
    starts with a header of unknown length). mp3, opus, aac and flac go through
    one ffmpeg process whose output a reader thread collects, so ``feed`` never
    blocks on a full pipe; ffmpeg flushes each packet, so bytes usually follow
    within a few encoder frames, and at the latest by ``close``.

    Use it as a context manager: leaving the block without ``close`` (an
    exception, a cancelled request) calls ``abort``, which kills and reaps ffmpeg.
    """

    def __init__(self, fmt: str, sample_rate: int) -> None:
        self.format = _check_format(fmt)
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        self.content_type = CONTENT_TYPES[self.format]
        self._closed = False
        self._header_sent = False
        self._lock = threading.Lock()
        self._out: list[bytes] = []
        self._stderr = bytearray()
        self._threads: list[threading.Thread] = []
        self.process: subprocess.Popen[bytes] | None = None
        if _needs_ffmpeg(self.format, sample_rate, streaming=True):
            self._start(_encode_command(self.format, sample_rate, streaming=True))

    def _start(self, command: list[str]) -> None:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except FileNotFoundError as exc:
            raise AudioError(f"ffmpeg could not be started ({exc}): install ffmpeg") from exc
        self.process = process
        assert process.stdout is not None
        assert process.stderr is not None
        for target, stream in (
            (self._pump_stdout, process.stdout),
            (self._pump_stderr, process.stderr),
        ):
            thread = threading.Thread(target=target, args=(stream.fileno(),), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _pump_stdout(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, _READ_BYTES)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._out.append(data)

    def _pump_stderr(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, _READ_BYTES)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._stderr += data
                del self._stderr[:-_STDERR_KEEP]

    def _take(self) -> bytes:
        with self._lock:
            data = b"".join(self._out)
            self._out.clear()
        return data

    def _failure(self, what: str) -> AudioError:
        with self._lock:
            stderr = bytes(self._stderr)
        return AudioError(f"ffmpeg failed while {what} {self.format}: {_reason(stderr)}")

    def feed(self, chunk: npt.ArrayLike) -> bytes:
        """Encode one chunk of float mono audio; returns the encoded bytes ready now (maybe b"")."""
        if self._closed:
            raise AudioError("the stream encoder is closed")
        pcm = _pcm16(chunk)
        process = self.process
        if process is None:
            if self.format == "wav" and not self._header_sent:
                self._header_sent = True
                return _wav_header(self.sample_rate, None) + pcm
            return pcm
        assert process.stdin is not None
        if pcm:
            try:
                process.stdin.write(pcm)
                process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                self.abort()
                raise self._failure("encoding") from exc
        return self._take()

    def close(self) -> bytes:
        """Finish the stream: the encoded bytes not yet returned. Raises AudioError if ffmpeg failed."""
        if self._closed:
            return b""
        process = self.process
        if process is None:
            self._closed = True
            if self.format == "wav" and not self._header_sent:
                self._header_sent = True
                return _wav_header(self.sample_rate, None)
            return b""
        assert process.stdin is not None
        try:
            try:
                process.stdin.close()
            except (BrokenPipeError, OSError) as exc:
                raise self._failure("flushing") from exc
            try:
                process.wait(timeout=FFMPEG_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise AudioError(
                    f"ffmpeg took longer than {FFMPEG_TIMEOUT:.0f} s to finish {self.format}"
                ) from exc
            self._join()
            if process.returncode != 0:
                raise self._failure("finishing")
            data = self._take()
        finally:
            self.abort()
        return data

    def _join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=10.0)

    def abort(self) -> None:
        """Stop at once: kill and reap ffmpeg, close its pipes, drop pending bytes. Idempotent."""
        self._closed = True
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10.0)
        self._join()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> StreamEncoder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()

    def __del__(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.returncode is None:
            with contextlib.suppress(OSError):  # the process may be gone already
                self.abort()


def open_stream(fmt: str, sample_rate: int) -> StreamEncoder:
    """A ``StreamEncoder`` for ``fmt`` at ``sample_rate`` (ffmpeg starts now for compressed formats)."""
    return StreamEncoder(fmt, sample_rate)


def _decode_run(command: list[str], data: bytes | None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            command,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=FFMPEG_TIMEOUT,
        )
    except FileNotFoundError as exc:
        raise AudioError(f"ffmpeg could not be started ({exc}): install ffmpeg") from exc
    except subprocess.TimeoutExpired as exc:
        raise AudioError(
            f"not audio: ffmpeg took longer than {FFMPEG_TIMEOUT:.0f} s to decode it"
        ) from exc


def decode(data: bytes, target_rate: int = PCM_SAMPLE_RATE) -> FloatArray:
    """Decode any audio file ffmpeg reads (wav, flac, mp3, ogg/opus, m4a, ...) to float32 mono.

    The first audio stream is downmixed to mono and resampled to ``target_rate``.
    Raises ``AudioError("not audio: ...")`` with ffmpeg's reason for bytes that
    are not audio, and for empty input.
    """
    _check_rate(target_rate)
    if not data:
        raise AudioError("not audio: the input is empty")
    ffmpeg = _ffmpeg()
    head = [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error"]
    tail = [
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-f",
        "f32le",
        "-ac",
        "1",
        "-ar",
        str(target_rate),
        "pipe:1",
    ]

    result: subprocess.CompletedProcess[bytes] | None = None
    path = ""
    # MP4/M4A (an "ftyp" box first) may keep its index after the samples and
    # needs a seekable input: those go through a temporary file, as does any
    # input that a pipe could not decode.
    if data[4:8] != b"ftyp":
        result = _decode_run([*head, "-i", "pipe:0", *tail], bytes(data))
    if result is None or result.returncode != 0 or not result.stdout:
        try:
            with tempfile.NamedTemporaryFile(prefix="tts-audio-", suffix=".bin") as handle:
                handle.write(data)
                handle.flush()
                path = handle.name
                result = _decode_run([*head, "-nostdin", "-i", path, *tail], None)
        except OSError:
            # No writable temp dir: keep the pipe's answer where there is one.
            if result is None:
                raise
    assert result is not None
    if result.returncode != 0:
        raise AudioError(f"not audio: {_reason(result.stderr, path, 'pipe:0')}")
    samples = np.frombuffer(result.stdout, dtype="<f4")
    if samples.size == 0:
        raise AudioError("not audio: no audio samples could be decoded")
    return samples.astype(np.float32)


class CrossFader:
    """Joins chunks as they arrive with f5-tts's cross-fade, holding back only a tail.

    Each next chunk overlaps the tail of everything joined so far by
    ``int(seconds * sample_rate)`` samples, clamped to both lengths; over the
    overlap the tail fades out (1 -> 0) and the chunk fades in (0 -> 1), both
    ``np.linspace`` ramps, as f5-tts's ``infer_batch_process`` joins them.
    ``push`` returns the samples that are final; ``flush`` the held-back tail.
    ``extend`` continues the current chunk without a fade, so a long chunk can
    be pushed in blocks. Speech streaming, whole responses, job output and the
    joining of Indexed-Job parts all join through this one class.
    """

    def __init__(self, sample_rate: int, seconds: float = CROSS_FADE_SECONDS) -> None:
        self.fade = max(int(seconds * sample_rate), 0)
        self.tail: npt.NDArray[np.float64] | None = None

    def _emit(self, body: npt.NDArray[np.float64]) -> FloatArray:
        keep = min(self.fade, len(body))
        self.tail = body[len(body) - keep :]
        return body[: len(body) - keep].astype(np.float32)

    def push(self, chunk: npt.ArrayLike) -> FloatArray:
        wave = np.asarray(chunk, dtype=np.float64).reshape(-1)
        if self.tail is None:
            return self._emit(wave)
        n = min(self.fade, len(self.tail), len(wave))
        if n <= 0:
            return self._emit(np.concatenate([self.tail, wave]))
        head = len(self.tail) - n
        blend = self.tail[head:] * np.linspace(1, 0, n) + wave[:n] * np.linspace(0, 1, n)
        return self._emit(np.concatenate([self.tail[:head], blend, wave[n:]]))

    def extend(self, samples: npt.ArrayLike) -> FloatArray:
        wave = np.asarray(samples, dtype=np.float64).reshape(-1)
        if self.tail is None:
            return self.push(wave)
        return self._emit(np.concatenate([self.tail, wave]))

    def flush(self) -> FloatArray:
        tail, self.tail = self.tail, None
        return np.zeros(0, dtype=np.float32) if tail is None else tail.astype(np.float32)


def crossfade(
    chunks: Sequence[npt.ArrayLike], sample_rate: int, seconds: float = CROSS_FADE_SECONDS
) -> FloatArray:
    """Join whole chunks with the cross-fade (see CrossFader). Empty -> empty; one -> itself."""
    fader = CrossFader(sample_rate, seconds)
    pieces = [fader.push(chunk) for chunk in chunks]
    return np.concatenate([*pieces, fader.flush()]).astype(np.float32, copy=False)
