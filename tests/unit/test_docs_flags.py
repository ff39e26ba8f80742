"""Every flag of the two console scripts is in docs/operations.md, so the docs cannot lag the code."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tts_inference import cli
from tts_operator import config

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        flag
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for flag in action.option_strings
        if flag.startswith("--")
    }


def _missing(flags: set[str], text: str) -> list[str]:
    """The flags ``text`` never names as a whole word (``--port`` is not in ``--ports``)."""
    return sorted(f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))


def _command_parser(command: str) -> argparse.ArgumentParser:
    parser = cli.build_parser(command)
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[command]
    return found


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_flag_of_tts_inference_is_documented(command: str) -> None:
    text = OPERATIONS.read_text()
    flags = _flags(_command_parser(command))
    assert flags, command
    missing = _missing(flags, text)
    assert not missing, f"tts-inference {command}: {missing} not in docs/operations.md"


def test_every_flag_of_tts_operator_is_documented() -> None:
    text = OPERATIONS.read_text()
    flags = _flags(config.build_parser())
    assert "--voice-aliases" in flags
    missing = _missing(flags, text)
    assert not missing, f"tts-operator: {missing} not in docs/operations.md"
