"""Local files on the cache volume: inter-process locks, atomic writes and links, hashes.

Every process that shares the cache (the sync and installer init containers,
servers, run-job pods) writes through these, so a reader sees a whole file or
none, and two writers of one thing take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from tts_inference.sizes import MIB


@contextlib.contextmanager
def file_lock(path: Path, what: str, out: TextIO, doing: str = "syncing") -> Iterator[None]:
    """An exclusive inter-process lock (flock) that says when it has to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another process is {doing} {what}", file=out, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(8 * MIB):
            h.update(data)
    return h.hexdigest()


MESSAGE_LIMIT = 1000  # characters of a failure kept for a termination message


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` on one line, cut to ``limit`` characters (a termination message, a status)."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def write_termination_log(path: Path | None, line: str) -> None:
    """Leave ``line`` where Kubernetes reads a container's termination message (best effort)."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.write_text(line)


def link_atomic(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, replacing any old link in one rename."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.absolute(), target_is_directory=True)
    os.replace(tmp, link)
