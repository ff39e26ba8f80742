"""--log-format / TTS_OPERATOR_LOG_FORMAT: json gives one JSON object per line."""

from __future__ import annotations

import json
import logging
from typing import Any

import kopf
import pytest


def _main() -> Any:
    """tts_operator.main, imported when a test runs: its timers read their interval from the
    environment at import, which the operator flow tests set before they import it."""
    from tts_operator import main

    return main


def _run_main(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[str]:
    """The entry point up to kopf.run, which here logs a line about a resource and returns.

    The root and asyncio loggers are put back as they were afterwards.
    """
    ran: list[str] = []

    def fake_run(**_: Any) -> None:
        logging.getLogger("tts_operator.job").info("reconciled %s", "tts/chapter-one")
        ran.append("run")

    operator_main = _main()
    monkeypatch.setattr(operator_main, "start_http_server", lambda *a, **k: None)
    monkeypatch.setattr(kopf, "run", fake_run)
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    before = (list(root.handlers), root.level, list(aio.handlers), aio.propagate)
    try:
        assert operator_main.main(argv) == 0
    finally:
        for handler in root.handlers[:]:
            if handler not in before[0]:
                root.removeHandler(handler)
        root.setLevel(before[1])
        aio.handlers[:] = before[2]
        aio.propagate = before[3]
    return ran


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["-A", "--log-format", "json"], {}), (["-A"], {"TTS_OPERATOR_LOG_FORMAT": "json"})],
    ids=["flag", "env"],
)
def test_json_log_lines_are_json_objects_with_the_message(
    argv: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("TTS_OPERATOR_LOG_FORMAT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _run_main(monkeypatch, argv) == ["run"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    messages = [r["message"] for r in records]
    assert "watching all namespaces" in messages
    assert "reconciled tts/chapter-one" in messages
    assert {r["severity"] for r in records} == {"info"}


def test_plain_log_lines_are_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TTS_OPERATOR_LOG_FORMAT", raising=False)
    _run_main(monkeypatch, ["-A"])
    err = capsys.readouterr().err
    assert "INFO tts_operator: watching all namespaces" in err
    assert not err.lstrip().startswith("{")


def test_an_unknown_log_format_stops_the_start_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    operator_main = _main()
    monkeypatch.setenv("TTS_OPERATOR_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit) as exc:
        operator_main.main(["-A"])
    assert exc.value.code == 2
    assert "TTS_OPERATOR_LOG_FORMAT='xml' is not a log format: use one of plain, json" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        operator_main.main(["-A", "--log-format", "xml"])
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not one of plain, json"):
        operator_main.setup_logging("yaml")
