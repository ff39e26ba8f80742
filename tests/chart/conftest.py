"""Fixtures of the chart and image tests: the tiny model, a bucket, and one server
run as the inference image runs it (left-out packages absent), shared by the
image test and the live Prometheus test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.chart import images
from tests.conftest import require_tool
from tests.support.process import stop_process, wait_for_http
from tests.support.s3 import S3Server, free_port

BUCKET = "tts-chart-test"
# Allowed to jobs but never created: a job writing there fails, as a job does
# when its bucket is wrong.
MISSING_BUCKET = "tts-chart-missing"


@dataclass
class ImageServer:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    blocked: tuple[str, ...]

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


def blocked_command(blocked: tuple[str, ...], *args: str) -> list[str]:
    """`tts-inference ARGS` with the distributions the inference image leaves out absent."""
    return [sys.executable, "-m", "tests.chart.blocked", ",".join(blocked), "--", *args]


def image_env(extra: dict[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """This environment, plus the inference image's own settings (its ENV lines)
    with the image's writable /tmp moved to ``home``; PYTHONPATH reaches tests/."""
    from tests.chart.images import env_of, load_stages

    env = dict(os.environ)
    final = load_stages(images.DOCKERFILES / "inference.Dockerfile")[-1]
    for key, value in env_of(final).items():
        if key in {"PATH", "LD_LIBRARY_PATH"} or value.startswith("/opt"):
            continue
        env[key] = value.replace("/tmp", str(home)) if home else value
    env["PYTHONPATH"] = os.pathsep.join([str(images.ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_inference.tiny_model import make_model

    require_tool("ffmpeg")  # audio loading and encoding go through FFmpeg
    return make_model(tmp_path_factory.mktemp("chart-tiny") / "model")


@pytest.fixture(scope="session")
def bucket(s3: S3Server) -> S3Server:
    client = s3.client(direct=True)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        client.create_bucket(Bucket=BUCKET)
    return s3


@pytest.fixture(scope="session")
def left_out() -> tuple[str, ...]:
    """The distributions tts-operator[inference] has that the inference image leaves out."""
    return tuple(sorted(images.dropped_distributions()))


@pytest.fixture(scope="session")
def image_server(
    tiny_model: Path,
    bucket: S3Server,
    left_out: tuple[str, ...],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ImageServer]:
    """`tts-inference serve` on the tiny model, as the image runs it.

    Small queue, batch and deadline, so that a little load shows every queue
    metric (429s and deadline drops included); jobs write to the moto bucket.
    """
    tmp = tmp_path_factory.mktemp("image-server")
    home = tmp / "home"
    home.mkdir()
    log = tmp / "serve.log"
    port = free_port()
    cmd = blocked_command(
        left_out,
        "serve",
        "--model-dir",
        str(tiny_model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--nfe-step",
        "4",
        "--max-wait-ms",
        "50",
        "--max-batch",
        "2",
        "--max-queue",
        "6",
        # One batch at a time: the load test counts on requests outwaiting their deadline.
        "--concurrent-batches",
        "1",
        "--request-timeout",
        "1.5",
        "--drain-grace",
        "2",
        "--jobs-uri",
        f"s3://{BUCKET}/jobs/",
        "--allowed-buckets",
        f"{BUCKET},{MISSING_BUCKET}",
    )
    env = image_env(bucket.env(endpoint=bucket.direct_endpoint), home=home)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=images.ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http("server", f"{url}/readyz", proc, log, timeout=180)
        yield ImageServer(proc, url, log, left_out)
    finally:
        stop_process(proc, timeout=60)
