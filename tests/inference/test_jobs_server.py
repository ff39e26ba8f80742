"""Voices and jobs on the real `tts-inference serve` with the tiny model, against moto's S3.

One server (A) registers voices in every upload format, speaks with them and
runs a job; then A stops and a second server (B) starts on an empty cache: it
finds the voices and the finished job in the bucket, and runs nothing again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import require_tool
from tests.inference.test_server import tiny_model
from tests.support.media import REFERENCE_TEXT, UPLOAD_FORMATS, reference_as
from tests.support.s3 import S3Server
from tests.support.server import Server, start_server, stop
from tts_inference import audio

__all__ = ["tiny_model"]  # the session fixture, shared with test_server.py

pytestmark = pytest.mark.slow

BUCKET = "tts-real"


def _serve(model: Path, tmp: Path, s3: S3Server, name: str) -> Server:
    return start_server(
        model,
        tmp / f"{name}.log",
        "--nfe-step",
        "2",
        "--max-wait-ms",
        "20",
        "--cache-dir",
        str(tmp / f"cache-{name}"),
        "--voices-uri",
        f"s3://{BUCKET}/voices/",
        "--allowed-buckets",
        BUCKET,
        env=s3.env(),
    )


@pytest.fixture(scope="module")
def env(s3: S3Server) -> S3Server:
    s3.client(direct=True).create_bucket(Bucket=BUCKET)
    return s3


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobs-server")


@pytest.fixture(scope="module")
def server_a(tiny_model: Path, env: S3Server, tmp: Path) -> Iterator[Server]:
    server = _serve(tiny_model, tmp, env, "a")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def finished(server_a: Server) -> dict[str, Any]:
    """A job that ran on server A, for the restart test."""
    return {}


def _speak(url: str, voice: str, text: str = "Hello from a registered voice.") -> np.ndarray:
    resp = httpx.post(
        f"{url}/v1/audio/speech",
        json={"model": "tiny", "input": text, "voice": voice, "response_format": "pcm"},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    return np.frombuffer(resp.content, dtype="<i2").astype(np.float32) / 32767


def _wait_job(url: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        if status["state"] in ("succeeded", "failed"):
            return status
        time.sleep(0.1)  # polling the job's state: the API offers no event
    raise TimeoutError(f"job {job_id} did not finish")


@pytest.mark.parametrize("fmt", list(UPLOAD_FORMATS))
def test_upload_in_each_format_and_speak_with_it(server_a: Server, fmt: str) -> None:
    filename, data = reference_as(require_tool("ffmpeg"), fmt)
    resp = httpx.post(
        f"{server_a.url}/v1/voices",
        data={"name": f"fmt-{fmt}", "text": REFERENCE_TEXT},
        files={"file": (filename, data, "application/octet-stream")},
        timeout=60,
    )
    assert resp.status_code == 201, resp.text
    assert 6.0 < resp.json()["seconds"] < 7.0
    wave = _speak(server_a.url, f"fmt-{fmt}")
    assert len(wave) / 24000 > 0.5
    assert np.isfinite(wave).all()


def test_upload_without_text_needs_an_asr_model(server_a: Server) -> None:
    filename, data = reference_as(require_tool("ffmpeg"), "wav")
    resp = httpx.post(
        f"{server_a.url}/v1/voices",
        data={"name": "no-text"},
        files={"file": (filename, data, "audio/wav")},
        timeout=60,
    )
    assert resp.status_code == 400
    assert "text is required: this server has no ASR model" in resp.json()["error"]["message"]


def test_a_job_runs_end_to_end_on_the_tiny_model(
    server_a: Server, env: S3Server, finished: dict[str, Any]
) -> None:
    text = " ".join(
        f"Paragraph {i} of the chapter says a few words, then a few more, and stops here."
        for i in range(8)
    )
    body = {
        "text": text,
        "voice": "fmt-flac",
        "output": {"uri": f"s3://{BUCKET}/outputs/default/chapter-1/", "format": "mp3"},
        "params": {"seed": 11},
    }
    resp = httpx.post(
        f"{server_a.url}/v1/jobs", json=body, headers={"Idempotency-Key": "uid-chapter-1"}
    )
    assert resp.status_code == 202, resp.text
    status = _wait_job(server_a.url, resp.json()["id"])
    assert status["state"] == "succeeded", status
    assert status["chunksTotal"] > 1, "the chapter was split"
    key = status["outputUri"].split("/", 3)[3]
    obj = env.client(direct=True).get_object(Bucket=BUCKET, Key=key)
    wave = audio.decode(obj["Body"].read())
    assert abs(len(wave) / 24000 - status["audioSeconds"]) < 0.1
    assert status["audioSeconds"] > 10
    metrics = server_a.metrics()
    assert 'tts_jobs{state="succeeded"} 1.0' in metrics
    finished.update(status, body=body, last_modified=obj["LastModified"])


def test_a_second_server_on_an_empty_cache_after_a_restart(
    tiny_model: Path, server_a: Server, env: S3Server, tmp: Path, finished: dict[str, Any]
) -> None:
    assert finished, "needs the job of the test before"
    assert stop(server_a) == 0
    server_b = _serve(tiny_model, tmp, env, "b")
    try:
        voices = {v["name"] for v in httpx.get(f"{server_b.url}/v1/voices").json()["data"]}
        assert {f"fmt-{fmt}" for fmt in UPLOAD_FORMATS} <= voices
        status = httpx.get(f"{server_b.url}/v1/jobs/{finished['id']}").json()
        assert status["state"] == "succeeded"
        assert status["outputUri"] == finished["outputUri"]
        assert status["audioSeconds"] == finished["audioSeconds"]
        again = httpx.post(
            f"{server_b.url}/v1/jobs",
            json=finished["body"],
            headers={"Idempotency-Key": "uid-chapter-1"},
        )
        assert again.status_code == 202
        assert again.json()["id"] == finished["id"]
        assert again.json()["state"] == "succeeded"
        key = finished["outputUri"].split("/", 3)[3]
        head = env.client(direct=True).head_object(Bucket=BUCKET, Key=key)
        assert head["LastModified"] == finished["last_modified"], "the job did not run again"
        wave = _speak(server_b.url, "fmt-mp3")
        assert len(wave) > 0
        metrics = server_b.metrics()
        assert "tts_voice_cache_misses_total 1.0" in metrics
        assert 'tts_jobs_finished_total{outcome="succeeded"}' not in metrics
        assert (tmp / "cache-b" / "voices" / "fmt-mp3" / "ref.wav").is_file()
    finally:
        stop(server_b)
