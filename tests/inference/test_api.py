"""The HTTP API on a fake engine: errors, readiness, limits, queueing, disconnects."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from tests.support.s3 import free_port
from tts_inference import audio
from tts_inference.app import build_app
from tts_inference.engine.fake import FakeEngine
from tts_inference.settings import ServerSettings


@contextmanager
def running(engine: FakeEngine, **settings: object) -> Iterator[str]:
    base = {"model_dir": Path("/nonexistent"), "model_name": "fake", "max_wait_ms": 20.0}
    app = build_app(ServerSettings(**{**base, **settings}), lambda _: engine)  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for the listening socket
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        engine.release()
        server.should_exit = True
        thread.join(timeout=30)


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/readyz").status_code == 200:
            return
        time.sleep(0.02)  # polling readiness, as a kubelet does
    raise TimeoutError("never ready")


def speech(url: str, **body: object) -> httpx.Response:
    payload = {
        "model": "fake",
        "input": "Hello there.",
        "voice": "default",
        "response_format": "pcm",
        **body,
    }
    return httpx.post(f"{url}/v1/audio/speech", json=payload, timeout=30)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def url(engine: FakeEngine) -> Iterator[str]:
    with running(engine, max_input_chars=200) as base:
        wait_ready(base)
        yield base


def test_readyz_is_503_until_warm_up_ends_and_health_never_touches_the_engine() -> None:
    engine = FakeEngine(delay=60)  # the warm-up batch blocks until released
    with running(engine) as base:
        assert engine.started.wait(10), "warm-up never started"
        calls = engine.calls
        for _ in range(5):
            assert httpx.get(f"{base}/healthz").status_code == 200
            not_ready = httpx.get(f"{base}/readyz")
            assert not_ready.status_code == 503
            assert "loading" in not_ready.json()["error"]["message"]
        refused = speech(base)
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert engine.calls == calls
        engine.release()
        wait_ready(base)
        calls = engine.calls
        for _ in range(5):
            assert httpx.get(f"{base}/healthz").status_code == 200
            assert httpx.get(f"{base}/readyz").status_code == 200
        assert engine.calls == calls, "health checks must never call the engine"
        assert engine.loads == 1


def test_speech_returns_the_engines_audio(url: str, engine: FakeEngine) -> None:
    resp = speech(url, input="Hello there.")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/pcm"
    samples = np.frombuffer(resp.content, dtype="<i2")
    assert len(samples) == FakeEngine.samples_for("Hello there.")


def _error(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "needle"),
    [
        ("empty-text", {"json": {"model": "fake", "input": "", "voice": "default"}}, 400, "input"),
        (
            "blank-text",
            {"json": {"model": "fake", "input": "   ", "voice": "default"}},
            400,
            "input is empty",
        ),
        (
            "text-over-limit",
            {"json": {"model": "fake", "input": "a" * 201, "voice": "default"}},
            400,
            "limit is 200",
        ),
        (
            "unknown-voice",
            {"json": {"model": "fake", "input": "hi", "voice": "nobody"}},
            404,
            "unknown voice 'nobody'",
        ),
        (
            "path-voice",
            {"json": {"model": "fake", "input": "hi", "voice": "../../etc/passwd"}},
            404,
            "unknown voice",
        ),
        (
            "unknown-format",
            {
                "json": {
                    "model": "fake",
                    "input": "hi",
                    "voice": "default",
                    "response_format": "aiff",
                }
            },
            400,
            "response_format",
        ),
        (
            "speed-too-fast",
            {"json": {"model": "fake", "input": "hi", "voice": "default", "speed": 4.01}},
            400,
            "speed",
        ),
        (
            "speed-too-slow",
            {"json": {"model": "fake", "input": "hi", "voice": "default", "speed": 0.24}},
            400,
            "speed",
        ),
        ("missing-input", {"json": {"model": "fake", "voice": "default"}}, 400, "input"),
        ("missing-model", {"json": {"input": "hi", "voice": "default"}}, 400, "model"),
        (
            "wrong-type",
            {"json": {"model": "fake", "input": ["hi"], "voice": "default"}},
            400,
            "input",
        ),
        (
            "nfe-step-zero",
            {"json": {"model": "fake", "input": "hi", "voice": "default", "nfe_step": 0}},
            400,
            "nfe_step",
        ),
        (
            "malformed-json",
            {
                "content": b'{"model": "fake", "input": ',
                "headers": {"content-type": "application/json"},
            },
            400,
            "not valid JSON",
        ),
        (
            "unknown-stream-format",
            {"json": {"model": "fake", "input": "hi", "voice": "default", "stream_format": "ws"}},
            400,
            "stream_format",
        ),
        (
            "lone-surrogate",
            {
                "content": b'{"model": "fake", "input": "a \\ud800 b", "voice": "default"}',
                "headers": {"content-type": "application/json"},
            },
            400,
            "unicode",
        ),
        (
            "only-control-characters",
            {"json": {"model": "fake", "input": "\u0000\u0007\t", "voice": "default"}},
            400,
            "nothing to speak",
        ),
        (
            "voice-object-without-id",
            {"json": {"model": "fake", "input": "hi", "voice": {"name": "default"}}},
            400,
            "voice",
        ),
    ],
)
def test_bad_input_gets_a_4xx_with_one_error_shape_and_the_server_keeps_serving(
    url: str, case: str, request_kwargs: dict[str, object], status: int, needle: str
) -> None:
    resp = httpx.post(f"{url}/v1/audio/speech", timeout=30, **request_kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status, resp.text
    assert needle in _error(resp)
    assert speech(url).status_code == 200


def test_oversized_body_is_refused(engine: FakeEngine) -> None:
    with running(engine, max_body_bytes=1000) as base:
        wait_ready(base)
        resp = speech(base, input="x" * 2000)
        assert resp.status_code == 413
        assert "limit is 1000" in _error(resp)


def test_unknown_fields_are_accepted_and_ignored(url: str) -> None:
    assert speech(url, instructions="Speak cheerfully.", some_future_field=True).status_code == 200


def test_api_key_guards_every_v1_route_but_not_health(engine: FakeEngine) -> None:
    with running(engine, api_key="s3cret-key") as base:
        wait_ready(base)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            resp = httpx.post(
                f"{base}/v1/audio/speech",
                json={"model": "fake", "input": "hi", "voice": "default"},
                headers=headers,
            )
            assert resp.status_code == 401
            assert "API key" in _error(resp)
            assert "s3cret-key" not in resp.text
        assert httpx.get(f"{base}/v1/models").status_code == 401
        ok = httpx.post(
            f"{base}/v1/audio/speech",
            json={"model": "fake", "input": "hi", "voice": "default", "response_format": "wav"},
            headers={"Authorization": "Bearer s3cret-key"},
        )
        assert ok.status_code == 200
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200


def test_full_queue_answers_429_with_retry_after() -> None:
    engine = FakeEngine()
    with running(engine, max_queue=2, max_batch=1) as base:
        wait_ready(base)
        engine.delay = 60
        engine.started.clear()
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(speech(base).status_code))
            for _ in range(1)
        ]
        threads[0].start()
        assert engine.started.wait(10)  # one request holds the device
        waiting = [
            threading.Thread(target=lambda: results.append(speech(base).status_code))
            for _ in range(2)
        ]
        for t in waiting:
            t.start()
        deadline = time.monotonic() + 10
        while (
            "tts_queue_depth 2.0" not in httpx.get(f"{base}/metrics").text
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)  # polling the queue gauge until both wait
        refused = speech(base)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "queue" in _error(refused)
        engine.release()
        for t in threads + waiting:
            t.join(timeout=30)
        assert results == [200, 200, 200]


def test_work_for_a_client_that_went_away_is_dropped() -> None:
    engine = FakeEngine()
    with running(engine, max_batch=1) as base:
        wait_ready(base)
        engine.delay = 60
        engine.started.clear()
        holder = threading.Thread(target=lambda: speech(base, input="Holding the device."))
        holder.start()
        assert engine.started.wait(10)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(
                f"{base}/v1/audio/speech",
                json={"model": "fake", "input": "Nobody waits for me.", "voice": "default"},
                timeout=0.5,
            )
        deadline = time.monotonic() + 10
        while (
            'status="499"' not in httpx.get(f"{base}/metrics").text and time.monotonic() < deadline
        ):
            time.sleep(0.02)  # polling until the server has noticed the disconnect
        engine.release()
        holder.join(timeout=30)
        assert speech(base, input="After.").status_code == 200
        texts = [r.text for r in engine.requests]
        assert "Nobody waits for me." not in texts
        assert (
            'tts_queue_dropped_total{reason="cancelled"} 1.0' in httpx.get(f"{base}/metrics").text
        )


def test_engine_failure_is_a_500_with_the_error_shape_and_the_server_keeps_serving() -> None:
    engine = FakeEngine(fail_on="explode")
    with running(engine) as base:
        wait_ready(base)
        resp = speech(base, input="please explode now")
        assert resp.status_code == 500
        assert _error(resp)
        assert speech(base).status_code == 200


def test_long_text_streams_chunk_by_chunk_with_the_first_before_the_rest(
    engine: FakeEngine,
) -> None:
    with running(engine, max_input_chars=10_000) as base:
        wait_ready(base)
        text = " ".join(f"Sentence number {i} is here." for i in range(30))
        chunks = engine.split_text(text, None, None, stream=True)  # type: ignore[arg-type]
        assert len(chunks) > 2
        # A short first chunk (a quarter of the budget), then chunks packed as before.
        assert len(chunks[0]) <= engine.max_chars // 4 < len(chunks[1])
        batches_before = len(engine.batches)
        resp = speech(base, input=text)
        assert resp.status_code == 200
        new_batches = engine.batches[batches_before:]
        assert new_batches[0] == 1, "the first chunk runs alone so its audio leaves first"
        assert sum(new_batches) == len(chunks)
        expected = audio.crossfade(
            [np.zeros(FakeEngine.samples_for(c), np.float32) for c in chunks], 24000
        )
        assert len(resp.content) // 2 == len(expected)


def test_stream_joiner_matches_the_whole_crossfade() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (24000, 9000, 30000, 5000)]
    joiner = audio.CrossFader(24000)
    streamed = np.concatenate([*(joiner.push(c) for c in chunks), joiner.flush()])
    np.testing.assert_allclose(streamed, audio.crossfade(chunks, 24000), atol=1e-6)


def _sse(resp: httpx.Response) -> list[dict[str, object]]:
    lines = [line for line in resp.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_sse_failure_after_the_first_event_is_an_error_event_and_before_it_a_status() -> None:
    engine = FakeEngine(fail_on="boom", max_chars=25)
    with running(engine) as base:
        wait_ready(base)
        body = {"model": "m", "voice": "alloy", "stream_format": "sse"}
        late = httpx.post(
            f"{base}/v1/audio/speech",
            json={**body, "input": "First sentence here. Then boom happens."},
            timeout=30,
        )
        assert late.status_code == 200
        *deltas, last = _sse(late)
        assert deltas
        assert [e["type"] for e in deltas] == ["speech.audio.delta"] * len(deltas)
        assert last["type"] == "error"
        error = last["error"]
        assert isinstance(error, dict)
        assert error["type"] == "server_error"
        assert "FakeEngineFailure" in str(error["message"])

        early = httpx.post(
            f"{base}/v1/audio/speech", json={**body, "input": "boom at once."}, timeout=30
        )
        assert early.status_code == 500
        assert early.headers["content-type"] == "application/json"
        assert "FakeEngineFailure" in _error(early)
        ok = httpx.post(f"{base}/v1/audio/speech", json={**body, "input": "Fine."}, timeout=30)
        assert _sse(ok)[-1]["type"] == "speech.audio.done"
