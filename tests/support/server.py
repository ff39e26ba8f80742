"""A real `tts-inference serve` process, started and stopped the way a kubelet would."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI

from tests.support.s3 import free_port

BIN = Path(sys.executable).parent


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    ready_seconds: float = 0.0  # process start to the first /readyz 200

    @property
    def client(self) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


def start_server(
    model_dir: Path,
    log: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    port: int | None = None,
) -> Server:
    """Start the server (on ``port``, or a free one) and return once /readyz says 200."""
    port = port or free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [
            str(BIN / "tts-inference"),
            "serve",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(proc, url, log, time.monotonic() - started)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a process that is starting up
    proc.kill()
    raise TimeoutError(log.read_text()[-3000:])


def stop(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=60)
