"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3 import S3Server, s3_server

BIN = Path(sys.executable).parent


def require_tool(name: str) -> str:
    """The path of a tool a test needs: skipped when missing, but a failure under CI."""
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required under CI and is not installed (make test installs it)")
    pytest.skip(f"{name} is not installed")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 behind a counting, fault-injecting proxy."""
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def clean_s3(s3: S3Server) -> Iterator[S3Server]:
    """The shared server with its counters reset and no faults, before and after."""
    s3.proxy.clear_faults()
    s3.proxy.rate = None
    s3.traffic.reset()
    yield s3
    s3.proxy.clear_faults()
    s3.proxy.rate = None


@pytest.fixture
def tts_inference() -> list[str]:
    """The console script, as a command-line prefix."""
    return [str(BIN / "tts-inference")]
