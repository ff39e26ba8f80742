"""Byte counts made readable, and the progress line a long transfer logs."""

from __future__ import annotations

import threading
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Counts bytes and prints a line every ``interval`` seconds for kubectl logs:
    ``<verb> <label>: 1.2 GiB / 2.0 GiB (60%) 85.0 MiB/s ETA 10s``, the line the
    operator reads into an endpoint's status."""

    def __init__(
        self, label: str, total: int, interval: float, out: TextIO, verb: str = "sync"
    ) -> None:
        self.label, self.total, self.interval, self.out = label, total, interval, out
        self.verb = verb
        self.done = 0
        self.fetched = 0
        self.start = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, n: int, fetched: bool = True) -> None:
        with self._lock:
            self.done += n
            if fetched:
                self.fetched += n

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.fetched / elapsed
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.verb} {self.label}: {human_bytes(self.done)} / {human_bytes(self.total)} ({pct:.0f}%) "
            f"{human_bytes(rate)}/s ETA {eta}"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=self.out, flush=True)

    def __enter__(self) -> Progress:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
