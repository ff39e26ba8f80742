"""The real server process on the tiny F5-TTS model, through the official openai client."""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import require_tool
from tests.support.s3 import free_port
from tests.support.server import HeldRequest, Server, start_server, stop
from tts_inference import audio

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_inference.tiny_model import make_model

    require_tool("ffmpeg")  # audio loading and encoding go through FFmpeg

    return make_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tiny_model,
        tmp_path_factory.mktemp("srv") / "serve.log",
        "--nfe-step",
        "4",
        "--max-wait-ms",
        "50",
        # Batching on, as on a GPU (a CPU's default is one request per batch).
        "--max-batch",
        "8",
    )
    yield srv
    stop(srv)


def _decode(fmt: str, data: bytes) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767
    return audio.decode(data)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_response_format_decodes_to_plausible_audio(server: Server, fmt: str) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    with server.client.audio.speech.with_streaming_response.create(
        model="tiny",
        voice="default",
        input=text,
        response_format=fmt,  # type: ignore[arg-type]
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(audio.CONTENT_TYPES[fmt])
        data = response.read()
    wave_ = _decode(fmt, data)
    seconds = len(wave_) / 24000
    # F5-TTS sizes output from the reference's speaking rate: ~45 characters -> a few seconds.
    assert 1.0 < seconds < 10.0, seconds
    assert np.isfinite(wave_).all()


def test_speed_makes_speech_shorter(server: Server) -> None:
    text = "Speaking faster should produce a shorter clip of audio."
    lengths = {}
    for speed in (0.5, 2.0):
        data = server.client.audio.speech.create(
            model="tiny", voice="default", input=text, response_format="pcm", speed=speed
        ).read()
        lengths[speed] = len(data)
    assert lengths[2.0] < lengths[0.5] / 2.5


def test_wav_is_a_complete_riff_file(server: Server) -> None:
    data = server.client.audio.speech.create(
        model="tiny", voice="default", input="A short one.", response_format="wav"
    ).read()
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)
        assert wav.getnframes() > 24000 * 0.3


def _pcm(server: Server, text: str, seed: int) -> np.ndarray:
    resp = httpx.post(
        f"{server.url}/v1/audio/speech",
        json={
            "model": "tiny",
            "input": text,
            "voice": "default",
            "response_format": "pcm",
            "seed": seed,
        },
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    return np.frombuffer(resp.content, dtype="<i2").astype(np.float32)


def test_same_seed_alone_and_inside_a_mixed_length_batch(server: Server) -> None:
    text = "Batching must not change what I say."
    alone = _pcm(server, text, seed=7)
    before = _batch_counts(server.metrics())
    others = [
        "Hi.",
        "A much longer sentence rides along in the same batch, to pad the others out a lot.",
    ]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(_pcm, server, t, s) for t, s in [(others[0], 1), (text, 7), (others[1], 2)]
        ]
        batched = futures[1].result()
        [f.result() for f in futures]
    after = _batch_counts(server.metrics())
    assert after["sum"] - before["sum"] == 3
    assert after["count"] - before["count"] < 3, "the three requests did not share a batch"
    assert batched.shape == alone.shape
    assert np.abs(batched - alone).max() <= 2, "more than 16-bit rounding apart"


def _batch_counts(text: str) -> dict[str, float]:
    out = {}
    for key in ("sum", "count"):
        match = re.search(rf"^tts_batch_size_{key} (\S+)$", text, re.M)
        out[key] = float(match.group(1)) if match else 0.0
    return out


def test_sixteen_concurrent_requests_are_batched(server: Server) -> None:
    before = _batch_counts(server.metrics())
    texts = [
        f"Request number {i} says a sentence of its own length{'.' * (i % 4)}" for i in range(16)
    ]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda t: server.client.audio.speech.create(
                    model="tiny", voice="default", input=t, response_format="wav"
                ).read(),
                texts,
            )
        )
    assert all(len(r) > 44 for r in results)
    after = _batch_counts(server.metrics())
    assert after["sum"] - before["sum"] == 16
    batches = after["count"] - before["count"]
    assert batches < 16, f"16 requests ran in {batches} batches: no batching"


def test_long_text_streams_before_it_is_all_synthesized(server: Server) -> None:
    text = " ".join(
        f"This is sentence number {i}, and it goes on for a little while longer." for i in range(12)
    )
    started = time.monotonic()
    first = None
    chunks = []
    with httpx.stream(
        "POST",
        f"{server.url}/v1/audio/speech",
        json={"model": "tiny", "input": text, "voice": "default", "response_format": "pcm"},
        timeout=300,
    ) as resp:
        assert resp.status_code == 200
        for chunk in resp.iter_bytes():
            if first is None and chunk:
                first = time.monotonic() - started
            chunks.append(chunk)
    total = time.monotonic() - started
    assert first is not None
    assert first < total * 0.75, f"first byte at {first:.2f}s of {total:.2f}s"
    seconds = len(b"".join(chunks)) / 2 / 24000
    assert seconds > 10, seconds


def test_metrics_cover_the_server(server: Server) -> None:
    server.client.audio.speech.create(
        model="tiny", voice="default", input="Count me.", response_format="mp3"
    ).read()
    text = server.metrics()
    for name in [
        "tts_requests_total",
        "tts_request_duration_seconds_bucket",
        "tts_queue_depth",
        "tts_batch_size_bucket",
        "tts_audio_seconds_total",
        "tts_realtime_factor_bucket",
        "tts_model_load_seconds",
        "tts_warmup_seconds",
        "tts_ready 1.0",
        "tts_build_info",
    ]:
        assert name in text, name
    assert re.search(r'tts_requests_total\{route="/v1/audio/speech",status="200"\} [1-9]', text)


def test_models_lists_the_served_model(server: Server) -> None:
    models = server.client.models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(
    tiny_model: Path, tmp_path: Path
) -> None:
    srv = start_server(tiny_model, tmp_path / "serve.log", "--drain-grace", "300")
    text = " ".join(f"Sentence {i} is spoken after the signal." for i in range(3))
    body = {"model": "tiny", "input": text, "voice": "default", "response_format": "wav"}
    # A request still uploading its body when SIGTERM comes: in flight for as long as the
    # test keeps it so, whatever the machine's speed.
    held = HeldRequest(srv, "/v1/audio/speech", json.dumps(body).encode())
    srv.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    ready = httpx.get(f"{srv.url}/readyz", timeout=10)
    while ready.status_code == 200 and time.monotonic() < deadline:
        ready = httpx.get(f"{srv.url}/readyz", timeout=10)  # until the signal is handled
    refused = httpx.post(
        f"{srv.url}/v1/audio/speech",
        json={"model": "tiny", "input": "new", "voice": "default"},
        timeout=10,
    )
    assert srv.proc.poll() is None, "the server left before its request in flight ended"
    status, audio_bytes = held.finish()
    code = srv.proc.wait(timeout=60)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert "draining" in refused.json()["error"]["message"]
    assert ready.status_code == 503
    assert status == 200
    assert len(audio_bytes) > 24000
    assert code == 0


def test_missing_model_file_is_a_clear_startup_error_not_a_download(
    tiny_model: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(tiny_model), str(broken)], check=True)
    (broken / "vocos" / "pytorch_model.bin").unlink()
    log = tmp_path / "serve.log"
    port = free_port()
    proc = subprocess.run(
        [
            str(BIN / "tts-inference"),
            "serve",
            "--model-dir",
            str(broken),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--termination-log",
            str(tmp_path / "termination-log"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 1
    assert "pytorch_model.bin" in proc.stderr
    assert "huggingface.co" not in proc.stderr.lower()
    # What Kubernetes shows as the container's termination message, and the endpoint's status.
    why = (tmp_path / "termination-log").read_text()
    assert why.startswith("serve failed: ")
    assert "pytorch_model.bin" in why


def test_server_never_runs_pip(tiny_model: Path, tmp_path: Path) -> None:
    """Starting and serving loads flash_attn from the cache at most; pip never runs."""
    script = f"""
import subprocess, sys, json, threading, os
calls = []
real = subprocess.Popen.__init__
def spy(self, args, *a, **k):
    calls.append(args if isinstance(args, str) else " ".join(map(str, args)))
    return real(self, args, *a, **k)
subprocess.Popen.__init__ = spy
import asyncio
from pathlib import Path
from fastapi.testclient import TestClient
from tts_inference.app import build_app
from tts_inference.settings import ServerSettings
app = build_app(ServerSettings(model_dir=Path({str(tiny_model)!r}), cache_dir=Path({str(tmp_path)!r}), nfe_step=2))
with TestClient(app) as client:
    import time
    for _ in range(600):
        if client.get("/readyz").status_code == 200:
            break
        time.sleep(0.1)
    r = client.post("/v1/audio/speech", json={{"model": "tiny", "input": "Hello.", "voice": "default", "response_format": "wav"}})
    assert r.status_code == 200, r.text
print(json.dumps(calls))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [c for c in calls if "pip" in c.split()[:3] or " -m pip" in c], calls
