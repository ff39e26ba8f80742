"""Processes the tests start: wait until one answers over HTTP, stop it as a kubelet would."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx


def wait_for_http(
    name: str, url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Return once GET ``url`` answers 200; RuntimeError if ``proc`` (``name``) exits first,
    TimeoutError after ``timeout`` seconds, each with the end of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode}: {log.read_text(errors='replace')[-4000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready: {log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)  # polling a process that is starting up


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
