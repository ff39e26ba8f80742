"""tts_inference.audio: every OpenAI response format, whole and streamed, decoding uploads, cross-fade."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_tool
from tts_inference import audio
from tts_inference.audio import (
    CONTENT_TYPES,
    FORMATS,
    AudioError,
    crossfade,
    decode,
    duration_seconds,
    encode,
    open_stream,
)

SR = 24000
FREQ = 440.0
AMP = 0.5
Q16 = 1.0 / 32767  # one 16-bit step
LOSSLESS = ("wav", "pcm", "flac")
COMPRESSED = ("mp3", "opus", "aac", "flac")


def sine(seconds: float, rate: int = SR, start: int = 0) -> np.ndarray:
    t = (np.arange(int(seconds * rate)) + start) / rate
    return (AMP * np.sin(2 * np.pi * FREQ * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def dominant_hz(x: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.argmax(spectrum) * rate / len(x))


def from_pcm(data: bytes) -> np.ndarray:
    return (np.frombuffer(data, dtype="<i2") / 32767.0).astype(np.float32)


def to_samples(data: bytes, fmt: str) -> np.ndarray:
    """pcm by hand (it has no header to decode); everything else through decode()."""
    return from_pcm(data) if fmt == "pcm" else decode(data, SR)


def assert_sine(decoded: np.ndarray, seconds: float, fmt: str) -> None:
    got = duration_seconds(len(decoded), SR)
    assert got == pytest.approx(seconds, rel=0.05), f"{fmt}: {got:.3f} s, expected {seconds} s"
    assert rms(decoded) > 0.5 * AMP / np.sqrt(2), f"{fmt}: decoded audio is (nearly) silent"
    assert dominant_hz(decoded) == pytest.approx(FREQ, abs=5), f"{fmt}: not a 440 Hz tone"


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return require_tool("ffmpeg")


def make_file(ffmpeg: str, tmp_path: Path, out_name: str, *args: str, rate: int = SR) -> bytes:
    """Encode 2 s of the sine with ffmpeg itself (from a wav), as an uploader's file would be."""
    source = tmp_path / "source.wav"
    source.write_bytes(encode(sine(2.0, rate), rate, "wav"))
    out = tmp_path / out_name
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(source), *args, str(out)], check=True)
    return out.read_bytes()


def poll_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Check ``condition`` until it holds or ``timeout`` passes (short waits, no fixed sleep)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        pause.wait(0.005)
    return condition()


# --- formats -----------------------------------------------------------------


def test_formats_and_content_types_match_openai() -> None:
    assert FORMATS == ("mp3", "opus", "aac", "flac", "wav", "pcm")
    assert dict(CONTENT_TYPES) == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_round_trip(fmt: str, ffmpeg: str) -> None:
    original = sine(2.0)
    data = encode(original, SR, fmt)
    assert isinstance(data, bytes)
    assert data
    decoded = to_samples(data, fmt)
    assert_sine(decoded, 2.0, fmt)
    if fmt in LOSSLESS:
        assert len(decoded) == len(original)
        np.testing.assert_allclose(decoded, original, atol=Q16 + 1e-6)


@pytest.mark.parametrize(
    ("fmt", "magic"),
    [
        ("wav", b"RIFF"),
        ("flac", b"fLaC"),
        ("opus", b"OggS"),
    ],
)
def test_encode_container_magic(fmt: str, magic: bytes, ffmpeg: str) -> None:
    assert encode(sine(0.2), SR, fmt).startswith(magic)


def test_encode_mp3_and_aac_are_bare_frames(ffmpeg: str) -> None:
    """mp3 starts with an MPEG sync word (no ID3 tag), aac with an ADTS header."""
    mp3 = encode(sine(0.2), SR, "mp3")
    assert mp3[0] == 0xFF
    assert mp3[1] & 0xE0 == 0xE0
    aac = encode(sine(0.2), SR, "aac")
    assert aac[0] == 0xFF
    assert aac[1] & 0xF6 == 0xF0


def test_wav_parses_with_wave_module() -> None:
    original = sine(2.0)
    data = encode(original, SR, "wav")
    with _wave_reader(data) as reader:
        assert reader.getframerate() == SR
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getnframes() == len(original)
        frames = reader.readframes(reader.getnframes())
    np.testing.assert_allclose(from_pcm(frames), original, atol=Q16 + 1e-6)


def _wave_reader(data: bytes) -> wave.Wave_read:
    return wave.open(io.BytesIO(data), "rb")


def test_pcm_is_raw_s16le_clipped_and_scaled_by_32767() -> None:
    data = encode(np.array([0.0, 1.0, -1.0, 2.0, -3.0, 0.5, np.nan], dtype=np.float32), SR, "pcm")
    assert np.frombuffer(data, dtype="<i2").tolist() == [0, 32767, -32767, 32767, -32767, 16384, 0]


def test_pcm_at_another_rate_is_resampled_to_24k(ffmpeg: str) -> None:
    data = encode(sine(2.0, 48000), 48000, "pcm")
    decoded = from_pcm(data)
    assert len(decoded) == pytest.approx(2 * SR, rel=0.01)
    assert_sine(decoded, 2.0, "pcm@48k")


def test_opus_at_a_rate_libopus_lacks_is_resampled(ffmpeg: str) -> None:
    data = encode(sine(2.0, 22050), 22050, "opus")
    assert_sine(decode(data, SR), 2.0, "opus@22.05k")


def test_empty_audio_encodes_to_valid_empty_files() -> None:
    assert encode(np.zeros(0, dtype=np.float32), SR, "pcm") == b""
    with _wave_reader(encode(np.zeros(0, dtype=np.float32), SR, "wav")) as reader:
        assert reader.getnframes() == 0


# --- streaming -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_round_trip(fmt: str, ffmpeg: str) -> None:
    original = sine(2.0)
    chunks = np.split(original, 4)  # 4 x 0.5 s
    with open_stream(fmt, SR) as encoder:
        assert encoder.content_type == CONTENT_TYPES[fmt]
        pieces = [encoder.feed(chunk) for chunk in chunks]
        pieces.append(encoder.close())
    data = b"".join(pieces)
    if fmt in ("pcm", "wav"):
        assert pieces[0], f"{fmt}: the first feed returned no bytes"
    if fmt == "wav":
        assert data[:4] == b"RIFF"
        riff_size, data_size = (
            struct.unpack("<I", data[4:8])[0],
            struct.unpack("<I", data[40:44])[0],
        )
        assert riff_size == data_size == 0xFFFFFFFF
        assert data[36:40] == b"data"
        # the samples after the header, by hand
        np.testing.assert_allclose(from_pcm(data[44:]), original, atol=Q16 + 1e-6)
    decoded = to_samples(data, fmt)  # wav: ffmpeg reads the unknown-length header too
    assert_sine(decoded, 2.0, f"streamed {fmt}")
    assert len(decoded) >= len(original), f"streamed {fmt}: samples were lost"
    if fmt in LOSSLESS:
        assert len(decoded) == len(original)
        np.testing.assert_allclose(decoded, original, atol=Q16 + 1e-6)
    if encoder.process is not None:
        assert encoder.process.returncode == 0


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_stream_uncompressed_bytes_equal_whole_file_samples(fmt: str) -> None:
    original = sine(1.0)
    with open_stream(fmt, SR) as encoder:
        first = encoder.feed(original[:100])
        rest = encoder.feed(original[100:]) + encoder.close()
    whole = encode(original, SR, fmt)
    header = 44 if fmt == "wav" else 0
    assert len(first) == header + 200
    assert (first + rest)[header:] == whole[header:]


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_stream_compressed_bytes_leave_before_close(fmt: str, ffmpeg: str) -> None:
    """ffmpeg starts on the first bytes (no input probing) and flushes each packet."""
    collected: list[bytes] = []
    with open_stream(fmt, SR) as encoder:
        collected.append(encoder.feed(sine(0.5)))

        def some_bytes() -> bool:
            collected.append(encoder.feed(np.zeros(0, dtype=np.float32)))
            return any(collected)

        assert poll_until(some_bytes), f"{fmt}: no bytes before close()"
        collected.append(encoder.feed(sine(1.5, start=int(0.5 * SR))))
        collected.append(encoder.close())
    assert_sine(to_samples(b"".join(collected), fmt), 2.0, f"streamed {fmt}")


def test_stream_wav_close_without_feed_is_a_header() -> None:
    with open_stream("wav", SR) as encoder:
        data = encoder.close()
        assert encoder.close() == b""
    assert len(data) == 44
    assert data.startswith(b"RIFF")


def test_stream_abort_reaps_ffmpeg(ffmpeg: str) -> None:
    encoder = open_stream("mp3", SR)
    encoder.feed(sine(0.5))
    process = encoder.process
    assert process is not None
    assert process.poll() is None
    encoder.abort()
    assert process.poll() is not None  # gone and reaped: no zombie
    assert process.returncode != 0
    encoder.abort()  # idempotent
    with pytest.raises(AudioError, match="closed"):
        encoder.feed(sine(0.1))


def test_stream_context_manager_aborts_on_exception(ffmpeg: str) -> None:
    processes: list[subprocess.Popen[bytes] | None] = []

    def respond() -> None:
        with open_stream("opus", SR) as encoder:
            encoder.feed(sine(0.5))
            processes.append(encoder.process)
            raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        respond()
    [process] = processes
    assert process is not None
    assert process.poll() is not None


def test_stream_context_manager_without_close_reaps(ffmpeg: str) -> None:
    with open_stream("aac", SR) as encoder:
        encoder.feed(sine(0.5))
        process = encoder.process
    assert process is not None
    assert process.poll() is not None


# --- errors --------------------------------------------------------------------


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(
        AudioError, match=r"unknown audio format 'ogg'.*mp3, opus, aac, flac, wav, pcm"
    ):
        encode(sine(0.1), SR, "ogg")
    with pytest.raises(AudioError, match="unknown audio format"):
        open_stream("m4a", SR)
    assert issubclass(AudioError, ValueError)


def test_missing_ffmpeg_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    for call in (
        lambda: encode(sine(0.1), SR, "mp3"),
        lambda: open_stream("opus", SR),
        lambda: decode(b"RIFF...."),
    ):
        with pytest.raises(AudioError, match=r"ffmpeg is not installed.*apt-get install ffmpeg"):
            call()
    # the formats that need no ffmpeg still work
    assert encode(sine(0.1), SR, "wav").startswith(b"RIFF")
    assert encode(sine(0.1), SR, "flac").startswith(b"fLaC")
    with open_stream("pcm", SR) as encoder:
        assert encoder.feed(sine(0.1))


@pytest.mark.parametrize(
    "data",
    [
        b"model: F5TTS_v1_Base\nThis is a text file, not audio.\n" * 20,
        Path(__file__).read_bytes(),
        bytes(range(256)) * 4,
    ],
    ids=["text", "python-source", "binary-junk"],
)
def test_decode_rejects_non_audio(data: bytes, ffmpeg: str) -> None:
    with pytest.raises(AudioError, match=r"^not audio: \S"):
        decode(data)


def test_decode_rejects_empty(ffmpeg: str) -> None:
    with pytest.raises(AudioError, match="not audio: the input is empty"):
        decode(b"")


# --- decoding uploads ----------------------------------------------------------


def test_decode_m4a_with_index_at_the_end(ffmpeg: str, tmp_path: Path) -> None:
    data = make_file(ffmpeg, tmp_path, "voice.m4a", "-c:a", "aac", "-f", "ipod")
    assert data[4:8] == b"ftyp"
    assert_sine(decode(data, SR), 2.0, "m4a")


def test_decode_stereo_44k_mp4_downmixes_and_resamples(ffmpeg: str, tmp_path: Path) -> None:
    data = make_file(
        ffmpeg,
        tmp_path,
        "voice.mp4",
        "-ac",
        "2",
        "-ar",
        "44100",
        "-c:a",
        "aac",
        "-f",
        "mp4",
        rate=44100,
    )
    decoded = decode(data, SR)
    assert decoded.dtype == np.float32
    assert decoded.ndim == 1
    assert_sine(decoded, 2.0, "stereo mp4")


def test_decode_ogg_opus(ffmpeg: str, tmp_path: Path) -> None:
    data = make_file(ffmpeg, tmp_path, "voice.ogg", "-c:a", "libopus", "-f", "ogg")
    assert data.startswith(b"OggS")
    assert_sine(decode(data, SR), 2.0, "ogg/opus")


def test_decode_resamples_to_target_rate(ffmpeg: str) -> None:
    decoded = decode(encode(sine(2.0), SR, "wav"), target_rate=16000)
    assert len(decoded) == pytest.approx(32000, rel=0.01)
    assert dominant_hz(decoded, 16000) == pytest.approx(FREQ, abs=5)


# --- cross-fade ----------------------------------------------------------------


def f5_tts_crossfade(waves: list[np.ndarray], rate: int, seconds: float) -> np.ndarray:
    """A verbatim copy of the joining loop of f5-tts 1.1.22's infer_batch_process."""
    if seconds <= 0:
        return np.concatenate(waves)
    final_wave = waves[0]
    for i in range(1, len(waves)):
        prev_wave = final_wave
        next_wave = waves[i]
        cross_fade_samples = int(seconds * rate)
        cross_fade_samples = min(cross_fade_samples, len(prev_wave), len(next_wave))
        if cross_fade_samples <= 0:
            final_wave = np.concatenate([prev_wave, next_wave])
            continue
        prev_overlap = prev_wave[-cross_fade_samples:]
        next_overlap = next_wave[:cross_fade_samples]
        fade_out = np.linspace(1, 0, cross_fade_samples)
        fade_in = np.linspace(0, 1, cross_fade_samples)
        cross_faded_overlap = prev_overlap * fade_out + next_overlap * fade_in
        final_wave = np.concatenate(
            [prev_wave[:-cross_fade_samples], cross_faded_overlap, next_wave[cross_fade_samples:]]
        )
    return final_wave


def test_crossfade_empty_and_single() -> None:
    empty = crossfade([], SR)
    assert empty.shape == (0,)
    assert empty.dtype == np.float32
    one = sine(0.3)
    np.testing.assert_array_equal(crossfade([one], SR), one)


def test_crossfade_two_constants_ramp_linearly() -> None:
    rate, seconds = 1000, 0.1  # 100 overlapping samples
    a = np.full(500, 1.0, dtype=np.float32)
    b = np.full(400, 3.0, dtype=np.float32)
    out = crossfade([a, b], rate, seconds)
    overlap = 100
    assert out.dtype == np.float32
    assert len(out) == len(a) + len(b) - overlap
    np.testing.assert_array_equal(out[:400], 1.0)
    np.testing.assert_array_equal(out[500:], 3.0)
    # over the overlap: 1 * (1 - t) + 3 * t with t = 0 .. 1 in 100 even steps
    np.testing.assert_allclose(out[400:500], 1.0 + 2.0 * np.linspace(0, 1, overlap), atol=1e-6)
    assert out[400] == pytest.approx(1.0)
    assert out[499] == pytest.approx(3.0)
    np.testing.assert_allclose(np.diff(out[400:500]), 2.0 / 99, atol=1e-6)


def test_crossfade_default_is_150_ms() -> None:
    out = crossfade([np.ones(SR, dtype=np.float32), np.ones(SR, dtype=np.float32)], SR)
    assert len(out) == 2 * SR - int(0.15 * SR)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)  # a constant stays constant


def test_crossfade_clamps_to_the_shorter_chunk() -> None:
    a = np.full(50, 2.0, dtype=np.float32)
    b = np.full(500, 4.0, dtype=np.float32)
    out = crossfade([a, b], 1000, 0.1)
    assert len(out) == 500  # overlap clamped to 50 = len(a)
    np.testing.assert_allclose(out[:50], 2.0 + 2.0 * np.linspace(0, 1, 50), atol=1e-6)


def test_crossfade_zero_seconds_concatenates() -> None:
    a, b = sine(0.1), sine(0.2)
    np.testing.assert_array_equal(crossfade([a, b], SR, 0.0), np.concatenate([a, b]))


@pytest.mark.parametrize("seconds", [0.15, 0.05, 0.5])
def test_crossfade_matches_f5_tts(seconds: float) -> None:
    rng = np.random.default_rng(7)
    # a short middle chunk makes the next overlap reach back past it, as in f5-tts
    lengths = [int(1.2 * SR), 900, int(0.8 * SR), 10, int(0.4 * SR)]
    waves = [rng.uniform(-1, 1, n).astype(np.float32) for n in lengths]
    expected = f5_tts_crossfade(waves, SR, seconds)
    got = crossfade(waves, SR, seconds)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected.astype(np.float32), atol=1e-6)


# --- packaging -----------------------------------------------------------------


def test_audio_module_imports_without_torch() -> None:
    code = (
        "import sys, tts_inference.audio\n"
        "bad = sorted(m for m in ('torch', 'torchaudio', 'f5_tts') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert audio.PCM_SAMPLE_RATE == SR
