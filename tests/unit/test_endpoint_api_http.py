"""The operator's job API client against a small HTTP stub: each answer the retry table names."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tts_operator.endpoint_api import JobApi, ServerError, is_transient

# What the stub answers to the next POST: (status, headers, body) or "reset".
Answer = tuple[int, dict[str, str], str] | str


class Stub:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.keys: list[str | None] = []
        self.auth: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                stub.keys.append(self.headers.get("Idempotency-Key"))
                stub.auth.append(self.headers.get("Authorization"))
                answer = stub.answers.pop(0)
                if answer == "reset":
                    # Close with RST (linger 0): the client sees the connection reset.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    return
                code, headers, body = answer  # type: ignore[misc]
                data = body.encode()
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.server.shutdown()
    s.server.server_close()


def submit(stub: Stub) -> object:
    api = JobApi(timeout=5)
    try:
        return asyncio.run(api.submit(stub.url, {"text": "Hi."}, "key-1", api_key="s3cret"))
    except Exception as exc:
        return exc


def error(code: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps({"error": {"message": message, "type": "x"}})
    return (code, {"Content-Type": "application/json", **(headers or {})}, body)


@pytest.mark.parametrize(
    ("answer", "transient", "retry_after"),
    [
        (error(429, "the queue is full", {"Retry-After": "1"}), True, 1.0),
        (error(503, "draining", {"Retry-After": "5"}), True, 5.0),
        (error(500, "internal error"), True, None),
        (error(502, "<html>bad gateway</html>"), True, None),
        ("reset", True, None),
        (error(400, "unknown voice 'nobody'"), False, None),
        (error(401, "missing or wrong API key"), False, None),
        (error(404, "no such route"), False, None),
    ],
    ids=["429", "503", "500", "502", "reset", "400", "401", "404"],
)
def test_each_answer_is_transient_or_final_as_the_table_says(
    stub: Stub, answer: Answer, transient: bool, retry_after: float | None
) -> None:
    stub.answers = [answer]
    outcome = submit(stub)
    assert isinstance(outcome, Exception), outcome
    assert is_transient(outcome) is transient, outcome
    if isinstance(outcome, ServerError):
        assert outcome.retry_after == retry_after
    assert stub.auth == ["Bearer s3cret"]
    assert stub.keys == ["key-1"]


def test_an_accepted_job_is_parsed(stub: Stub) -> None:
    stub.answers = [
        (202, {"Content-Type": "application/json"}, json.dumps({"id": "j-1", "state": "queued"}))
    ]
    job = submit(stub)
    assert getattr(job, "id", None) == "j-1"
