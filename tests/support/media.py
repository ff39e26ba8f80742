"""Audio files for voice-upload tests, made with ffmpeg from the packaged default voice."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from tts_inference.voices import PACKAGE_VOICES

REFERENCE_WAV = PACKAGE_VOICES / "default.wav"
REFERENCE_TEXT = (PACKAGE_VOICES / "default.txt").read_text().strip()

# upload format -> (file name, ffmpeg output arguments)
UPLOAD_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wav": ("ref.wav", ("-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le", "-f", "wav")),
    "flac": ("ref.flac", ("-c:a", "flac", "-f", "flac")),
    "mp3": ("ref.mp3", ("-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3")),
    "ogg": ("ref.ogg", ("-ar", "48000", "-c:a", "libopus", "-b:a", "32k", "-f", "ogg")),
    "m4a": ("ref.m4a", ("-c:a", "aac", "-b:a", "64k", "-f", "ipod")),
}


def ffmpeg_file(ffmpeg: str, inputs: list[str], out_args: tuple[str, ...]) -> bytes:
    """Run ffmpeg into a temporary (seekable) file and return its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        subprocess.run(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *inputs, *out_args, str(out)],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()


def reference_as(ffmpeg: str, fmt: str) -> tuple[str, bytes]:
    """The default voice's speech, with a second of silence around it, in ``fmt``."""
    name, args = UPLOAD_FORMATS[fmt]
    padded = ["-af", "adelay=1000,apad=pad_dur=1"]
    return name, ffmpeg_file(ffmpeg, ["-i", str(REFERENCE_WAV), *padded], args)


def long_tone_mp3(ffmpeg: str, seconds: int) -> bytes:
    """A long tone as a small mp3 (8 kbps): long in time, small in bytes."""
    return ffmpeg_file(
        ffmpeg,
        ["-f", "lavfi", "-i", f"sine=frequency=220:duration={seconds}:sample_rate=8000"],
        ("-ac", "1", "-c:a", "libmp3lame", "-b:a", "8k", "-f", "mp3"),
    )


def silence_wav(ffmpeg: str, seconds: int) -> bytes:
    return ffmpeg_file(
        ffmpeg,
        ["-f", "lavfi", "-i", f"anullsrc=r=24000:cl=mono:d={seconds}"],
        ("-c:a", "pcm_s16le", "-f", "wav"),
    )
