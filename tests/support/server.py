"""A real `tts-inference serve` process, started and stopped the way a kubelet would."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import OpenAI

from tests.support.process import wait_for_http
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
    try:
        wait_for_http("server", f"{url}/readyz", proc, log, timeout)
    except TimeoutError:
        proc.kill()
        raise
    return Server(proc, url, log, time.monotonic() - started)


class HeldRequest:
    """A POST whose body is still arriving: the server counts it in flight (and a draining
    server waits for it) until ``finish`` sends the rest. A slow upload, made on purpose,
    so the test decides when it ends."""

    def __init__(self, server: Server, path: str, body: bytes, api_key: str | None = None) -> None:
        self.server = server
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=300)
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body[:1])
        self.rest = body[1:]
        deadline = time.monotonic() + 60
        while not re.search(r"^tts_http_requests_in_flight [1-9]", server.metrics(), re.M):
            if time.monotonic() > deadline:
                raise TimeoutError("the server never counted the held request in flight")
            time.sleep(0.05)  # polling the server's own gauge until it counts the request

    def finish(self) -> tuple[int, bytes]:
        """Send the rest of the body; the response's status and body."""
        self.sock.sendall(self.rest)
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = _unchunk(body)
        return int(head.split()[1]), body


def _unchunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        line_end = data.index(b"\r\n", pos)
        size = int(data[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


def stop(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=60)
