"""A program written for OpenAI's speech API, with only its base URL changed, gets audio.

The real server on the tiny F5-TTS model, through the official openai client:
every voice name and form, speed and stream format OpenAI accepts, and texts
up to OpenAI's input limit in any script.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.inference.test_server import tiny_model  # noqa: F401  (the session's tiny model)
from tests.support.server import Server, start_server, stop
from tts_inference import audio
from tts_inference.voices import OPENAI_VOICES

pytestmark = pytest.mark.slow

SAMPLE_RATE = 24_000


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    srv = start_server(
        tiny_model, tmp_path_factory.mktemp("openai") / "serve.log", "--nfe-step", "2"
    )
    yield srv
    stop(srv)


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767


def _speak(server: Server, **params: object) -> np.ndarray:
    response = server.client.audio.speech.create(
        model="tts-1",
        response_format="pcm",
        **{"voice": "default", **params},  # type: ignore[arg-type]
    )
    samples = _pcm(response.read())
    assert len(samples) > 0
    assert np.isfinite(samples).all()
    return samples


@pytest.mark.parametrize("voice", OPENAI_VOICES)
def test_each_openai_voice_name_speaks(server: Server, voice: str) -> None:
    alias = _speak(server, voice=voice, input="Hello there.", extra_body={"seed": 7})
    builtin = _speak(server, voice="default", input="Hello there.", extra_body={"seed": 7})
    np.testing.assert_array_equal(alias, builtin)  # the alias speaks with the built-in voice


def test_the_voice_object_form_is_the_name(server: Server) -> None:
    by_object = _speak(server, voice={"id": "alloy"}, input="Hi.", extra_body={"seed": 3})
    by_name = _speak(server, voice="alloy", input="Hi.", extra_body={"seed": 3})
    np.testing.assert_array_equal(by_object, by_name)


def test_voices_lists_the_aliases(server: Server) -> None:
    voices = httpx.get(f"{server.url}/v1/voices", timeout=30).json()["data"]
    default = next(v for v in voices if v["name"] == "default")
    assert default["aliases"] == sorted(OPENAI_VOICES)
    one = httpx.get(f"{server.url}/v1/voices/nova", timeout=30).json()
    assert one["name"] == "default"
    assert "nova" in one["aliases"]


def test_openai_speed_range_scales_the_duration(server: Server) -> None:
    text = "Speed changes how long this takes to say."
    slow = _speak(server, input=text, speed=0.25, extra_body={"seed": 1})
    fast = _speak(server, input=text, speed=4.0, extra_body={"seed": 1})
    assert len(slow) > 8 * len(fast), (len(slow), len(fast))


def test_instructions_are_accepted_and_do_not_change_the_audio(server: Server) -> None:
    plain = _speak(server, input="Same words.", extra_body={"seed": 5})
    styled = _speak(
        server, input="Same words.", instructions="Speak cheerfully.", extra_body={"seed": 5}
    )
    np.testing.assert_array_equal(plain, styled)


def _events(server: Server, **body: object) -> list[dict[str, object]]:
    payload = {"model": "tts-1", "voice": "alloy", "stream_format": "sse", **body}
    with httpx.stream(
        "POST", f"{server.url}/v1/audio/speech", json=payload, timeout=300
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines[:3]
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_sse_streams_deltas_then_done_with_usage(server: Server) -> None:
    text = " ".join(
        f"This is sentence number {i}, long enough to be its own chunk." for i in range(6)
    )
    events = _events(server, input=text)
    *deltas, done = events
    assert deltas
    assert all(e["type"] == "speech.audio.delta" for e in deltas)
    assert done["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(str(e["audio"])) for e in deltas)
    samples = _pcm(audio)  # pcm when no response_format is given
    assert len(samples) / SAMPLE_RATE > 3
    usage = done["usage"]
    assert isinstance(usage, dict)
    assert usage["input_tokens"] == len(text)
    assert usage["output_tokens"] == len(samples) // 256
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_carries_the_requested_format(server: Server) -> None:
    events = _events(server, input="In a wave file.", response_format="wav")
    audio = b"".join(base64.b64decode(str(e["audio"])) for e in events[:-1])
    assert audio[:4] == b"RIFF"
    assert audio[8:12] == b"WAVE"


def test_the_client_streams_raw_audio(server: Server) -> None:
    with server.client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="echo",
        input="Streamed as raw audio.",
        response_format="pcm",
        stream_format="audio",
    ) as response:
        assert response.status_code == 200
        data = b"".join(response.iter_bytes())
    assert len(_pcm(data)) > SAMPLE_RATE // 2


@pytest.mark.parametrize("stream_format", [None, "audio", "sse"])
@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_streamed_or_not_is_audio(
    server: Server, fmt: str, stream_format: str | None
) -> None:
    text = "Every format, streamed or not."
    if stream_format == "sse":
        events = _events(server, input=text, response_format=fmt)
        assert events[-1]["type"] == "speech.audio.done"
        data = b"".join(base64.b64decode(str(e["audio"])) for e in events[:-1])
    else:
        extra = {} if stream_format is None else {"stream_format": stream_format}
        with server.client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice="coral",
            input=text,
            response_format=fmt,  # type: ignore[arg-type]
            **extra,  # type: ignore[arg-type]
        ) as response:
            assert response.status_code == 200
            data = b"".join(response.iter_bytes())
    samples = _pcm(data) if fmt == "pcm" else audio.decode(data)
    assert 0.5 < len(samples) / SAMPLE_RATE < 10
    assert np.isfinite(samples).all()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("word " * 818 + "word", id="4096-chars-no-sentence-end"),
        pytest.param("x" * 4096, id="4096-chars-no-spaces"),
        pytest.param("无标点的中文文本" * 187 + "中文文本", id="1500-chinese-chars"),
    ],
)
def test_any_text_up_to_the_limit_is_spoken(server: Server, text: str) -> None:
    assert len(text) <= 4096
    samples = _speak(server, input=text)
    assert len(samples) / SAMPLE_RATE > 5
    assert server.proc.poll() is None
