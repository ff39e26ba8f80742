"""Reference-audio preparation against f5-tts's own pydub steps; ASR discovery and lazy loading."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from tts_inference.engine.asr import WhisperTranscriber, find_asr_model
from tts_inference.errors import BadRequest
from tts_inference.jobs import finish_in_thread
from tts_inference.refaudio import prepare_reference
from tts_inference.voices import VoiceStore

SR = 24000


def _tone(rng: np.random.Generator, seconds: float, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    wobble = 1 + 0.3 * rng.standard_normal(len(t))
    return (amp * np.sin(2 * np.pi * 200 * t) * wobble).astype(np.float32)


def _quiet(rng: np.random.Generator, seconds: float, amp: float = 0.0) -> np.ndarray:
    return (amp * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def _f5_length_ms(samples: np.ndarray) -> int:
    """preprocess_ref_audio_text's clipping and trimming, on pydub, as f5-tts 1.1.22 does it."""
    from f5_tts.infer.utils_infer import remove_silence_edges
    from pydub import AudioSegment, silence  # type: ignore[import-untyped]

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    aseg = AudioSegment(pcm, sample_width=2, frame_rate=SR, channels=1)
    wave = AudioSegment.silent(duration=0)
    for min_len, thresh in ((1000, -50), (100, -40)):
        pieces = silence.split_on_silence(
            aseg, min_silence_len=min_len, silence_thresh=thresh, keep_silence=1000, seek_step=10
        )
        wave = AudioSegment.silent(duration=0)
        for piece in pieces:
            if len(wave) > 6000 and len(wave + piece) > 12000:
                break
            wave += piece
        if len(wave) <= 12000:
            break
    if len(wave) > 12000:
        wave = wave[:12000]
    return len(remove_silence_edges(wave) + AudioSegment.silent(duration=50, frame_rate=SR))


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "short": np.concatenate([_quiet(rng, 0.5), _tone(rng, 3, 0.3), _quiet(rng, 0.7)]),
        "long-with-pauses": np.concatenate(
            [
                _tone(rng, 4, 0.3),
                _quiet(rng, 1.5),
                _tone(rng, 5, 0.3),
                _quiet(rng, 1.2),
                _tone(rng, 6, 0.3),
                _quiet(rng, 2),
                _tone(rng, 3, 0.2),
            ]
        ),
        "long-short-pauses": np.concatenate(
            [p for _ in range(8) for p in (_tone(rng, 2.5, 0.3), _quiet(rng, 0.3, 0.001))]
        ),
        "long-no-pause": _tone(rng, 20, 0.3),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_prepare_reference_matches_f5_tts(case: str) -> None:
    samples = _cases()[case]
    ours = prepare_reference(samples, SR)
    assert round(len(ours) * 1000 / SR) == _f5_length_ms(samples)
    assert len(ours) / SR <= 12.05


def test_silence_leaves_nothing() -> None:
    rng = np.random.default_rng(2)
    assert len(prepare_reference(np.zeros(3 * SR, np.float32), SR)) == 0
    assert len(prepare_reference(_quiet(rng, 3, 0.003), SR)) == 0


def test_asr_model_is_found_only_when_complete(tmp_path: Path) -> None:
    assert find_asr_model(tmp_path) is None
    revision = tmp_path / "models" / "whisper-large-v3-turbo" / "abc123"
    revision.mkdir(parents=True)
    (revision / "config.json").write_text("{}")
    assert find_asr_model(tmp_path) is None, "no .complete marker yet"
    (revision / ".complete").write_text("{}")
    assert find_asr_model(tmp_path) == revision
    assert find_asr_model(None, revision) == revision
    assert find_asr_model(tmp_path, tmp_path / "elsewhere") is None


def test_the_asr_pipeline_loads_lazily_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    transcriber = WhisperTranscriber(Path("/models/whisper"))
    loads: list[int] = []

    def fake_load() -> object:
        loads.append(1)
        return lambda inputs, **kwargs: {"text": f" heard {len(inputs['raw'])} samples "}

    monkeypatch.setattr(transcriber, "_load", fake_load)
    assert loads == [], "nothing loads before the first transcription"
    threads = [
        threading.Thread(target=transcriber, args=(np.zeros(SR, np.float32), SR)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert transcriber(np.zeros(100, np.float32), SR) == "heard 100 samples"
    assert loads == [1]
    assert transcriber.loads == 1


def test_voice_store_uses_the_transcriber_or_asks_for_text(tmp_path: Path) -> None:
    from tests.support.media import REFERENCE_WAV

    data = REFERENCE_WAV.read_bytes()
    heard: list[int] = []

    def transcribe(samples: np.ndarray, rate: int) -> str:
        heard.append(rate)
        return " spoken words "

    store = VoiceStore(tmp_path / "voices", transcriber=transcribe)
    assert store.create("asr", data)["text"] == "spoken words"
    assert heard == [SR]
    assert store.get("asr").text == "spoken words"
    bare = VoiceStore(tmp_path / "other")
    with pytest.raises(BadRequest, match="text is required"):
        bare.create("bare", data)
    assert not (tmp_path / "other" / "bare").exists()


def test_finish_in_thread_waits_for_the_thread_then_cancels() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def work() -> str:
        started.set()
        release.wait(10)
        finished.append("done")
        return "result"

    async def main() -> tuple[str, bool]:
        task = asyncio.create_task(finish_in_thread(work))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.sleep(0)  # a bare yield (no waiting): the cancellation is delivered
        assert not task.done(), "must wait for the thread"
        release.set()
        try:
            await task
        except asyncio.CancelledError:
            return finished[0], True
        return finished[0], False

    assert asyncio.run(main()) == ("done", True)
