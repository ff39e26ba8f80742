"""Reference audio as F5-TTS expects it: trimmed of silence and clipped to about 12 s.

A numpy re-implementation of ``preprocess_ref_audio_text`` in f5-tts 1.1.22
(``f5_tts/infer/utils_infer.py``), which works on pydub segments:

1. split on silences of at least 1 s below -50 dBFS (keeping 1 s around each
   piece) and join pieces while the result stays under 12 s once it is over 6 s;
2. if that is still over 12 s, the same with silences of 0.1 s below -40 dBFS;
3. if still over 12 s, cut at 12 s;
4. trim leading and trailing silence below -42 dBFS in 10 ms steps, and append
   50 ms of silence.

Positions are milliseconds as in pydub (a segment's length is its duration in
ms, rounded); levels compare the RMS of float samples with ``10 ** (dB / 20)``,
as pydub compares the RMS of 16-bit samples with that fraction of full scale.
Nothing here imports f5_tts or torch (the server's import stays light).
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.float32]

MAX_MS = 12_000
KEEP_OVER_MS = 6_000
EDGE_THRESHOLD_DB = -42.0
EDGE_STEP_MS = 10
TAIL_MS = 50


def length_ms(samples: Audio, sample_rate: int) -> int:
    """A segment's length in ms, as pydub's ``len()``."""
    return round(len(samples) * 1000 / sample_rate)


def _at(ms: int, sample_rate: int) -> int:
    return ms * sample_rate // 1000


def _window_rms(
    samples: Audio, sample_rate: int, starts: npt.NDArray[np.int64], width_ms: int
) -> npt.NDArray[np.float64]:
    """RMS of ``samples[start : start + width]`` for each start (ms), via one cumulative sum."""
    squares = np.concatenate([[0.0], np.cumsum(np.square(samples, dtype=np.float64))])
    a = np.minimum(starts * sample_rate // 1000, len(samples))
    b = np.minimum((starts + width_ms) * sample_rate // 1000, len(samples))
    n = np.maximum(b - a, 1)
    mean = np.maximum(squares[b] - squares[a], 0.0) / n
    rms: npt.NDArray[np.float64] = np.sqrt(mean) * (b > a)
    return rms


def detect_silence(
    samples: Audio, sample_rate: int, min_silence_ms: int, threshold_db: float, seek_ms: int
) -> list[list[int]]:
    """Silent ranges [start, end] in ms, as pydub.silence.detect_silence."""
    total = length_ms(samples, sample_rate)
    if total < min_silence_ms:
        return []
    threshold = 10 ** (threshold_db / 20)
    last = total - min_silence_ms
    starts = list(range(0, last + 1, seek_ms))
    if last % seek_ms:
        starts.append(last)
    rms = _window_rms(samples, sample_rate, np.asarray(starts, dtype=np.int64), min_silence_ms)
    silent = [s for s, r in zip(starts, rms, strict=True) if r <= threshold]
    if not silent:
        return []
    ranges: list[list[int]] = []
    prev = start = silent[0]
    for s in silent[1:]:
        continuous = s == prev + seek_ms
        gap = s > prev + min_silence_ms
        if not continuous and gap:
            ranges.append([start, prev + min_silence_ms])
            start = s
        prev = s
    ranges.append([start, prev + min_silence_ms])
    return ranges


def detect_nonsilent(
    samples: Audio, sample_rate: int, min_silence_ms: int, threshold_db: float, seek_ms: int
) -> list[list[int]]:
    """Non-silent ranges [start, end] in ms, as pydub.silence.detect_nonsilent."""
    silent = detect_silence(samples, sample_rate, min_silence_ms, threshold_db, seek_ms)
    total = length_ms(samples, sample_rate)
    if not silent:
        return [[0, total]]
    if silent[0][0] == 0 and silent[0][1] == total:
        return []
    ranges: list[list[int]] = []
    prev_end = 0
    for start, end in silent:
        ranges.append([prev_end, start])
        prev_end = end
    if silent[-1][1] != total:
        ranges.append([prev_end, total])
    if ranges[0] == [0, 0]:
        ranges.pop(0)
    return ranges


def split_on_silence(
    samples: Audio,
    sample_rate: int,
    min_silence_ms: int,
    threshold_db: float,
    keep_ms: int,
    seek_ms: int,
) -> list[Audio]:
    """The non-silent pieces with ``keep_ms`` of context, as pydub.silence.split_on_silence."""
    ranges = [
        [start - keep_ms, end + keep_ms]
        for start, end in detect_nonsilent(
            samples, sample_rate, min_silence_ms, threshold_db, seek_ms
        )
    ]
    for first, second in itertools.pairwise(ranges):
        if second[0] < first[1]:
            first[1] = (first[1] + second[0]) // 2
            second[0] = first[1]
    total = length_ms(samples, sample_rate)
    return [
        samples[_at(max(start, 0), sample_rate) : _at(min(end, total), sample_rate)]
        for start, end in ranges
    ]


def _join_under_limit(pieces: list[Audio], sample_rate: int) -> Audio:
    joined: list[Audio] = []
    length = 0
    for piece in pieces:
        n = len(piece)
        if (
            round(length * 1000 / sample_rate) > KEEP_OVER_MS
            and round((length + n) * 1000 / sample_rate) > MAX_MS
        ):
            break
        joined.append(piece)
        length += n
    return np.concatenate(joined) if joined else np.zeros(0, np.float32)


def leading_silence_ms(
    samples: Audio,
    sample_rate: int,
    threshold_db: float = EDGE_THRESHOLD_DB,
    step_ms: int = EDGE_STEP_MS,
) -> int:
    """Where the leading silence ends, in ms, as pydub.silence.detect_leading_silence."""
    total = length_ms(samples, sample_rate)
    if total == 0:
        return 0
    starts = np.arange(0, total, step_ms, dtype=np.int64)
    rms = _window_rms(samples, sample_rate, starts, step_ms)
    with np.errstate(divide="ignore"):
        level = np.where(rms > 0, 20 * np.log10(np.maximum(rms, 1e-300)), -np.inf)
    loud = np.nonzero(level >= threshold_db)[0]
    return min(int(starts[loud[0]]), total) if len(loud) else total


def trim_edges(samples: Audio, sample_rate: int) -> Audio:
    """Leading and trailing silence below -42 dBFS removed, as f5-tts's remove_silence_edges."""
    start = leading_silence_ms(samples, sample_rate)
    rest = samples[_at(start, sample_rate) :]
    end = leading_silence_ms(rest[::-1].copy(), sample_rate)
    if end > 0:
        rest = rest[: _at(length_ms(rest, sample_rate) - end, sample_rate)]
    return rest


def prepare_reference(samples: Audio, sample_rate: int) -> Audio:
    """Clip to about 12 s at a silence, trim the edges and add 50 ms of silence (f5-tts's steps).

    Returns an empty array when nothing is left above -42 dBFS (a silent file).
    """
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    clipped = _join_under_limit(
        split_on_silence(samples, sample_rate, 1000, -50, 1000, 10), sample_rate
    )
    if length_ms(clipped, sample_rate) > MAX_MS:
        clipped = _join_under_limit(
            split_on_silence(samples, sample_rate, 100, -40, 1000, 10), sample_rate
        )
    if length_ms(clipped, sample_rate) > MAX_MS:
        clipped = clipped[: _at(MAX_MS, sample_rate)]
    trimmed = trim_edges(clipped, sample_rate)
    if len(trimmed) == 0:
        return trimmed.astype(np.float32)
    tail = np.zeros(_at(TAIL_MS, sample_rate), dtype=np.float32)
    return np.concatenate([trimmed, tail]).astype(np.float32)
