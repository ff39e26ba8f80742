"""Fuzzing the real server on the tiny model: no input gets a 5xx, and it stays ready.

- schemathesis generates requests for every operation of the server's own
  OpenAPI schema: each answer is documented, in its declared shape, and never
  a server error.
- hypothesis generates speech texts (any Unicode, control characters, lone
  surrogates, long runs without punctuation or spaces): each is 200 with
  audio or a 4xx in the one error shape.

Both run derandomized (the same examples on every machine) and sized to keep
``make test`` within its budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.generation.case import Case

from tests.inference.test_server import tiny_model  # noqa: F401  (the session's tiny model)
from tests.support.server import Server, start_server, stop

pytestmark = pytest.mark.slow

KNOWN_VOICES: tuple[Any, ...] = ("default", "alloy", {"id": "nova"})
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    root = tmp_path_factory.mktemp("fuzz")
    srv = start_server(
        tiny_model,
        root / "serve.log",
        "--nfe-step",
        "2",
        "--cache-dir",
        str(root / "cache"),
        "--max-upload-mb",
        "1",
    )
    yield srv
    stop(srv)


def _schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def _fuzz_each_operation(server: Server, examples: int) -> list[str]:
    """Run every operation's generated cases; the failures, one line each."""
    failures: list[str] = []
    schema = _schema(server)
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        strategy = operation.as_strategy()

        @given(case=strategy)
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Case) -> None:  # type: ignore[type-arg]
            if case.path == "/v1/audio/speech" and isinstance(case.body, dict):
                # A random name is an unknown voice (a 404 every time): speak with a real one.
                case.body["voice"] = KNOWN_VOICES[len(case.body) % len(KNOWN_VOICES)]
            try:
                case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=120)
            except (
                Exception,
                BaseExceptionGroup,
            ) as exc:  # collected, so one run reports every operation's failures
                failures.append(f"{case.method} {case.path}: {str(exc).splitlines()[0]}")

        run()
    return failures


def test_every_operation_answers_as_its_schema_says(server: Server) -> None:
    failures = _fuzz_each_operation(server, examples=25)
    assert not failures, "\n".join(sorted(set(failures))[:20])
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


def _runs(alphabet: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Long runs of one or a few characters, as no punctuation and no spaces produce."""
    return st.builds(
        lambda piece, times: (piece * times)[:4096],
        st.text(alphabet, min_size=1, max_size=4),
        st.integers(min_value=50, max_value=1500),
    )


TEXTS = st.one_of(
    st.text(max_size=300),  # any Unicode, control characters and lone surrogates included
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=300),
    _runs(st.characters(codec="utf-8", exclude_categories=["Z"])),
    _runs(st.sampled_from("无标点中文かなカナ한국어ไทย")),
)


@given(text=TEXTS)
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_any_text_is_spoken_or_refused_with_a_reason(server: Server, text: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    resp = httpx.post(
        f"{server.url}/v1/audio/speech",
        content=json.dumps(body).encode(),  # ASCII escapes: a lone surrogate reaches the server
        headers={"content-type": "application/json"},
        timeout=300,
    )
    if resp.status_code == 200:
        assert len(resp.content) > 0
    else:
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
        error = resp.json()["error"]
        assert error["message"]
        assert error["type"] == "invalid_request_error"
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
