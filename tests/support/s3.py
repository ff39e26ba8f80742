"""A real S3 server for tests: moto's server process, behind a counting, fault-injecting proxy.

Clients talk plain HTTP to the proxy with unmodified boto3. The proxy forwards
every request to moto and counts the response body bytes it sends back per
object key, so a test can assert how many bytes of each object left "the
bucket". Faults (a status code, a dropped connection half way through a body,
a slow response) are injected by rules a test installs.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.support.process import stop_process
from tts_inference.storage.bucket import S3Client

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key-must-never-be-printed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port that is coming up, not synchronising work
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Fault:
    """Applies to requests matching ``method`` and ``key_contains``, ``times`` times (-1: always)."""

    method: str = "GET"
    key_contains: str = ""
    status: int | None = None  # answer with this status and an S3 error body
    code: str = "InternalError"
    drop_after: int | None = None  # send this many body bytes, then close the connection
    delay: float = 0.0  # seconds before answering
    hold: threading.Event | None = None  # answer only once the test sets it
    times: int = 1
    ranged_only: bool = False
    hits: int = 0

    def matches(self, method: str, key: str, headers: dict[str, str]) -> bool:
        if self.times == 0 or method != self.method or self.key_contains not in key:
            return False
        return not (self.ranged_only and "range" not in headers)


@dataclass
class Traffic:
    body_bytes: Counter[str] = field(default_factory=Counter)  # GET body bytes sent, by key
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, key)
    statuses: Counter[int] = field(default_factory=Counter)
    header_names: Counter[str] = field(default_factory=Counter)  # request headers seen, lower-case
    lock: threading.Lock = field(default_factory=threading.Lock)
    watchers: list[tuple[int, threading.Event]] = field(default_factory=list)

    def add_body(self, key: str, n: int) -> None:
        with self.lock:
            self.body_bytes[key] += n
            total = sum(self.body_bytes.values())
            for threshold, event in self.watchers:
                if total >= threshold:
                    event.set()

    def when_bytes_reach(self, threshold: int) -> threading.Event:
        """An event set once the GET body bytes sent since the last reset reach ``threshold``."""
        event = threading.Event()
        with self.lock:
            self.watchers.append((threshold, event))
        self.add_body("", 0)
        return event

    def reset(self) -> None:
        with self.lock:
            self.body_bytes.clear()
            self.requests.clear()
            self.statuses.clear()
            self.header_names.clear()
            self.watchers.clear()

    def bytes_for(self, predicate: Callable[[str], bool] = lambda _: True) -> int:
        with self.lock:
            return sum(n for k, n in self.body_bytes.items() if predicate(k))


HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}


class Proxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.traffic = Traffic()
        self.faults: list[Fault] = []
        self.rate: float | None = None  # bytes per second per response, None: unlimited
        self.fault_lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                key = unquote(urlsplit(self.path).path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                length = int(headers.get("content-length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._take_fault(self.command, key, headers)
                with proxy.traffic.lock:
                    proxy.traffic.requests[(self.command, key)] += 1
                    proxy.traffic.header_names.update(list(headers))
                if fault and fault.delay:
                    time.sleep(fault.delay)  # the injected slowness itself
                if fault and fault.hold is not None:
                    fault.hold.wait(timeout=300)
                if fault and fault.status:
                    err = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                        f"<Message>injected</Message><Key>{key}</Key></Error>"
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(err)
                    with proxy.traffic.lock:
                        proxy.traffic.statuses[fault.status] += 1
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                try:
                    fwd = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    conn.request(self.command, self.path, body=body or None, headers=fwd)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD answer has no body but tells the object's length.
                head_length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", head_length or str(len(data)))
                self.end_headers()
                with proxy.traffic.lock:
                    proxy.traffic.statuses[resp.status] += 1
                if self.command == "HEAD":
                    return
                limit = fault.drop_after if fault and fault.drop_after is not None else len(data)
                # Sent in slices and counted as each slice leaves, so a client killed
                # mid-body is charged only for what it could have received.
                step = 256 * 1024
                for pos in range(0, limit, step):
                    piece = data[pos : min(pos + step, limit)]
                    self.wfile.write(piece)
                    if self.command == "GET":
                        proxy.traffic.add_body(key, len(piece))
                    if proxy.rate:
                        time.sleep(len(piece) / proxy.rate)  # the injected bandwidth limit itself
                if limit < len(data):
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _take_fault(self, method: str, key: str, headers: dict[str, str]) -> Fault | None:
        with self.fault_lock:
            for fault in self.faults:
                if fault.matches(method, key, headers):
                    if fault.times > 0:
                        fault.times -= 1
                    fault.hits += 1
                    return fault
        return None

    def add_fault(self, fault: Fault) -> Fault:
        with self.fault_lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.fault_lock:
            self.faults.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class S3Server:
    endpoint: str  # the proxy: what clients use
    direct_endpoint: str  # moto itself, bypassing the proxy
    proxy: Proxy

    @property
    def traffic(self) -> Traffic:
        return self.proxy.traffic

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """Environment for a client process: the standard AWS_* variables only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=endpoint or self.endpoint,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION="us-east-1",
        )
        return env

    @contextmanager
    def in_environ(self) -> Iterator[S3Server]:
        """This process's AWS_* variables point at the server (for in-process clients)."""
        saved = {k: os.environ.get(k) for k in self.env() if k.startswith("AWS_")}
        os.environ.update({k: v for k, v in self.env().items() if k.startswith("AWS_")})
        try:
            yield self
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def client(self, direct: bool = False) -> S3Client:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.direct_endpoint if direct else self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    port = free_port()
    log = open(log_dir / "moto.log", "wb")  # noqa: SIM115
    moto_bin = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto_bin), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc=proc)
        proxy = Proxy(port)
        try:
            yield S3Server(f"http://127.0.0.1:{proxy.port}", f"http://127.0.0.1:{port}", proxy)
        finally:
            proxy.close()
    finally:
        stop_process(proc, timeout=10)
        log.close()
