"""`tts-inference sync`: make a model present and verified in the cache, exactly once.

Layout (DESIGN.md): ``<cache>/models/<name>/<manifest-digest>/`` holds the files,
a copy of ``manifest.json`` and, written last, ``.complete``. Any number of
processes may run this at once on one volume: an inter-process lock per digest
lets one download while the others wait, then find the marker and verify.

Each file is fetched with parallel ranged GETs into ``<file>.part``; every piece
written is recorded in ``<file>.part.progress`` so a killed sync resumes where
it stopped. The sha256 is computed while the download runs (chunks are hashed
in order as they complete), and the file is renamed into place only when size
and sha256 match the manifest.

A source that was synced before is remembered in ``models/<name>/.sources/``: a
warm start then reads no byte from the bucket and takes milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tts_inference.sizes import MIB
from tts_inference.storage.bucket import (
    PERMANENT_EXIT,
    TRANSIENT,
    ObjectStore,
    PermanentStorageError,
    S3Client,
    S3Uri,
    StorageError,
    describe,
    make_client,
)
from tts_inference.storage.files import (
    file_lock,
    link_atomic,
    sha256_file,
    write_atomic,
    write_termination_log,
)
from tts_inference.storage.progress import Progress, human_bytes

COMPLETE = ".complete"
MANIFEST = "manifest.json"
MANIFEST_LIMIT = 64 * MIB  # a manifest lists files; even thousands fit in a few MiB
PIECE = 1 * MIB


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[ManifestFile, ...]
    digest: str
    raw: bytes

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def parse(cls, raw: bytes, where: str = "manifest.json") -> Manifest:
        try:
            doc = json.loads(raw)
            entries = doc["files"]
            if not isinstance(entries, list) or not entries:
                raise ValueError("'files' must be a non-empty list")
            files = []
            for entry in entries:
                path, size, sha = (
                    str(entry["path"]),
                    int(entry["size"]),
                    str(entry["sha256"]).lower(),
                )
                if not safe_relpath(path):
                    raise ValueError(f"unsafe path {path!r}")
                if size < 0 or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                    raise ValueError(f"bad size or sha256 for {path!r}")
                files.append(ManifestFile(path, size, sha))
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentStorageError(f"{where} is not a valid manifest: {exc}") from None
        if len({f.path for f in files}) != len(files):
            raise PermanentStorageError(f"{where} lists a file twice")
        return cls(tuple(files), hashlib.sha256(raw).hexdigest(), raw)


def safe_relpath(path: str) -> bool:
    """A relative path that stays inside its folder and is not one of ours."""
    parts = path.split("/")
    return (
        bool(path)
        and not path.startswith("/")
        and all(p not in {"", ".", ".."} for p in parts)
        and not path.endswith((".part", ".progress"))
        and parts[-1] not in {COMPLETE, MANIFEST}
    )


# --------------------------------------------------------------------------- progress


# --------------------------------------------------------------------------- locking


# --------------------------------------------------------------------------- one file


@dataclass
class Chunk:
    index: int
    start: int
    end: int  # exclusive
    written: int = 0  # bytes of this chunk already on disk

    @property
    def done(self) -> bool:
        return self.start + self.written >= self.end


@dataclass
class FileJob:
    entry: ManifestFile
    uri: S3Uri
    final: Path
    chunks: list[Chunk]
    fd: int = -1
    progress_fd: int = -1
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed_chunks: int = 0
    finished: bool = False
    state_lock: threading.Lock = field(default_factory=threading.Lock)
    hash_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def part(self) -> Path:
        return self.final.with_name(self.final.name + ".part")

    @property
    def progress(self) -> Path:
        return self.final.with_name(self.final.name + ".part.progress")

    def on_disk(self) -> int:
        return sum(c.written for c in self.chunks)


def _zero_copy_reader(body: Any) -> Callable[[memoryview], int]:
    """A readinto() for a boto3 response body that fills one reused buffer.

    Reading into a reused buffer instead of allocating a fresh 1 MiB bytes object
    per piece roughly halves the CPU a download costs (no page faults for new
    allocations). It reads from the http.client response under botocore's
    StreamingBody and urllib3; where that layout differs, it falls back to read().
    """
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if isinstance(fp, http.client.HTTPResponse):
        return fp.readinto

    def fallback(view: memoryview) -> int:
        data = body.read(len(view))
        view[: len(data)] = data
        return len(data)

    return fallback


def plan_chunks(size: int, chunk_size: int) -> list[Chunk]:
    if size == 0:
        return []
    return [
        Chunk(i, start, min(start + chunk_size, size))
        for i, start in enumerate(range(0, size, chunk_size))
    ]


def load_resume_state(job: FileJob) -> None:
    """Mark what a killed sync left on disk, so only the rest is fetched."""
    if (
        not (job.part.exists() and job.progress.exists())
        or job.part.stat().st_size != job.entry.size
    ):
        for stale in (job.part, job.progress):
            stale.unlink(missing_ok=True)
        return
    ends: dict[int, int] = {}
    for line in job.progress.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            idx, end = int(fields[0]), int(fields[1])
            ends[idx] = max(ends.get(idx, 0), end)
    for chunk in job.chunks:
        if chunk.index in ends:
            chunk.written = max(0, min(ends[chunk.index], chunk.end) - chunk.start)


class Downloader:
    def __init__(
        self,
        store: ObjectStore,
        progress: Progress,
        *,
        max_attempts: int = 10,
        backoff: float = 0.2,
        out: TextIO = sys.stderr,
    ) -> None:
        self.store = store
        self.progress = progress
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.out = out
        self.cancelled = threading.Event()

    def fetch_chunk(self, job: FileJob, chunk: Chunk) -> None:
        attempt = 0
        while not chunk.done:
            if self.cancelled.is_set():
                return
            offset = chunk.start + chunk.written
            try:
                body = self.store.open_range(job.uri, offset, chunk.end - 1)
                read_into = _zero_copy_reader(body)
                buf = memoryview(bytearray(PIECE))
                try:
                    while offset < chunk.end:
                        want = min(PIECE, chunk.end - offset)
                        got = read_into(buf[:want])
                        if not got:
                            break  # short body: retried from here below
                        os.pwrite(job.fd, buf[:got], offset)
                        offset += got
                        chunk.written = offset - chunk.start
                        os.write(job.progress_fd, f"{chunk.index} {offset}\n".encode())
                        self.progress.add(got)
                        attempt = 0
                finally:
                    body.close()
                if not chunk.done:
                    raise ConnectionError(f"response ended at byte {offset} of {chunk.end}")
            except StorageError as exc:
                if exc.permanent:
                    raise
                attempt = self._retry(attempt, exc, job)
            except TRANSIENT as exc:
                attempt = self._retry(attempt, exc, job)

    def _retry(self, attempt: int, exc: BaseException, job: FileJob) -> int:
        attempt += 1
        if attempt >= self.max_attempts:
            raise StorageError(
                f"giving up on {job.uri} after {attempt} attempts: {describe(exc, job.uri)}"
            )
        delay = min(self.backoff * 2 ** (attempt - 1), 10.0) * (0.5 + random.random())
        print(
            f"retry {attempt} for {job.uri} in {delay:.1f}s: {describe(exc, job.uri)}",
            file=self.out,
            flush=True,
        )
        if self.cancelled.wait(delay):
            raise StorageError("cancelled")
        return attempt

    def advance_hash(self, job: FileJob) -> None:
        """Hash completed chunks in order; whoever holds the lock does the work."""
        while True:
            if not job.hash_lock.acquire(blocking=False):
                return
            try:
                buf = memoryview(bytearray(4 * MIB))
                while job.hashed_chunks < len(job.chunks) and job.chunks[job.hashed_chunks].done:
                    chunk = job.chunks[job.hashed_chunks]
                    pos = chunk.start
                    while pos < chunk.end:
                        got = os.preadv(job.fd, [buf[: min(len(buf), chunk.end - pos)]], pos)
                        if not got:
                            raise StorageError(f"{job.part} is shorter than expected")
                        job.hasher.update(buf[:got])
                        pos += got
                    job.hashed_chunks += 1
                if job.hashed_chunks == len(job.chunks) and not job.finished:
                    job.finished = True
                    self.finish(job)
            finally:
                job.hash_lock.release()
            if job.hashed_chunks >= len(job.chunks) or not job.chunks[job.hashed_chunks].done:
                return

    def finish(self, job: FileJob) -> None:
        digest = job.hasher.hexdigest()
        size = os.fstat(job.fd).st_size
        if size != job.entry.size or digest != job.entry.sha256:
            os.close(job.fd)
            job.fd = -1
            job.part.unlink(missing_ok=True)
            job.progress.unlink(missing_ok=True)
            raise StorageError(
                f"sha256 mismatch for {job.uri}: expected {job.entry.sha256}, got {digest} "
                f"({size} bytes); the object in the bucket does not match its manifest"
            )
        os.fsync(job.fd)
        os.replace(job.part, job.final)
        job.progress.unlink(missing_ok=True)


# --------------------------------------------------------------------------- sync


@dataclass
class SyncResult:
    model: str
    digest: str
    path: Path
    bytes_downloaded: int
    files_downloaded: int
    files_reused: int
    seconds: float
    warm: bool

    def summary(self) -> dict[str, Any]:
        return {
            "event": "sync-complete",
            "model": self.model,
            "digest": self.digest,
            "path": str(self.path),
            "bytesDownloaded": self.bytes_downloaded,
            "filesDownloaded": self.files_downloaded,
            "filesReused": self.files_reused,
            "seconds": round(self.seconds, 3),
            "warm": self.warm,
        }


def model_name_from_source(src: S3Uri) -> str:
    parts = [p for p in src.key.split("/") if p]
    if "models" in parts[:-1]:
        return parts[parts.index("models") + 1]
    if len(parts) >= 2:
        return parts[-2]
    if parts:
        return parts[-1]
    raise StorageError(f"cannot tell the model name from {src}: pass --name")


def source_pointer(cache_dir: Path, name: str, source: str) -> Path:
    return (
        cache_dir / "models" / name / ".sources" / hashlib.sha256(source.encode()).hexdigest()[:32]
    )


def verify_complete(target: Path, level: str) -> Manifest | None:
    """The manifest of a complete model folder, or None when it is not (or no longer) whole."""
    if not (target / COMPLETE).exists():
        return None
    try:
        manifest = Manifest.parse((target / MANIFEST).read_bytes(), str(target / MANIFEST))
    except (OSError, StorageError):
        return None
    for entry in manifest.files:
        path = target / entry.path
        try:
            if path.stat().st_size != entry.size:
                return None
        except FileNotFoundError:
            return None
        if level == "full" and sha256_file(path) != entry.sha256:
            return None
    return manifest


def _get_small(store: ObjectStore, uri: S3Uri, attempts: int = 8) -> bytes:
    for attempt in range(1, attempts + 1):
        try:
            return store.get_bytes(uri, MANIFEST_LIMIT)
        except StorageError as exc:
            if exc.permanent or attempt == attempts:
                raise
        except TRANSIENT as exc:
            if attempt == attempts:
                raise StorageError(f"giving up on {uri}: {describe(exc, uri)}") from None
        time.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def sync(
    source: str,
    cache_dir: Path,
    *,
    name: str | None = None,
    verify: str = "size",
    workers: int = 8,
    chunk_size: int = 16 * MIB,
    reserve_bytes: int = 256 * MIB,
    progress_interval: float = 5.0,
    client_factory: Callable[[int], S3Client] = make_client,
    out: TextIO = sys.stderr,
) -> SyncResult:
    start = time.monotonic()
    src = S3Uri.parse(source)
    name = name or model_name_from_source(src)
    models = cache_dir / "models" / name
    pointer = source_pointer(cache_dir, name, source)

    # Warm path: this source was synced before; trust the marker after a size
    # check (or a full rehash with --verify full) and read nothing from the bucket.
    if pointer.exists():
        digest = pointer.read_text().strip()
        manifest = verify_complete(models / digest, verify)
        if manifest is not None:
            n = len(manifest.files)
            return SyncResult(
                name, digest, models / digest, 0, 0, n, time.monotonic() - start, True
            )

    store = ObjectStore(lambda: client_factory(workers))
    manifest_uri = S3Uri(src.bucket, src.prefix + MANIFEST)
    manifest = Manifest.parse(_get_small(store, manifest_uri), str(manifest_uri))
    target = models / manifest.digest
    lock = cache_dir / ".locks" / f"models-{name}-{manifest.digest[:16]}.lock"

    with file_lock(lock, f"{name} ({manifest.digest[:12]})", out):
        if verify_complete(target, verify) is None:
            (target / COMPLETE).unlink(missing_ok=True)
            downloaded, fetched, reused = _download(
                store,
                src,
                manifest,
                target,
                cache_dir,
                workers,
                chunk_size,
                reserve_bytes,
                progress_interval,
                out,
                name,
                verify,
            )
            write_atomic(target / MANIFEST, manifest.raw)
            marker = {
                "digest": manifest.digest,
                "source": source,
                "files": len(manifest.files),
                "bytes": manifest.total_bytes,
            }
            write_atomic(target / COMPLETE, json.dumps(marker).encode())
            warm = False
        else:
            downloaded, fetched, reused = 0, 0, len(manifest.files)
            warm = True
        pointer.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(pointer, manifest.digest.encode())

    return SyncResult(
        name, manifest.digest, target, fetched, downloaded, reused, time.monotonic() - start, warm
    )


def _download(
    store: ObjectStore,
    src: S3Uri,
    manifest: Manifest,
    target: Path,
    cache_dir: Path,
    workers: int,
    chunk_size: int,
    reserve_bytes: int,
    progress_interval: float,
    out: TextIO,
    name: str,
    verify: str,
) -> tuple[int, int, int]:
    """Fetch every file not yet in place. Returns (files fetched, bytes fetched, files reused)."""
    jobs: list[FileJob] = []
    reused = 0
    for entry in manifest.files:
        final = target / entry.path
        if final.exists() and final.stat().st_size == entry.size:
            # Renamed into place only after its sha256 matched; --verify full checks again.
            if verify != "full" or sha256_file(final) == entry.sha256:
                reused += 1
                continue
            final.unlink()
        job = FileJob(
            entry,
            S3Uri(src.bucket, src.prefix + entry.path),
            final,
            plan_chunks(entry.size, chunk_size),
        )
        final.parent.mkdir(parents=True, exist_ok=True)
        load_resume_state(job)
        jobs.append(job)

    needed = sum(j.entry.size - j.on_disk() for j in jobs)
    target.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target).free
    if needed + reserve_bytes > free:
        raise StorageError(
            f"not enough free space in {cache_dir}: the model needs {human_bytes(needed)} ({needed} bytes) "
            f"more plus a {human_bytes(reserve_bytes)} reserve, and {human_bytes(free)} is free; "
            f"grow the cache volume (spec.storage.cache.size) or free space"
        )

    resumed = sum(j.on_disk() for j in jobs)
    if resumed:
        print(f"resuming: {human_bytes(resumed)} already on disk", file=out, flush=True)
    progress = Progress(name, manifest.total_bytes, progress_interval, out)
    progress.add(
        resumed + sum(e.size for e in manifest.files if (target / e.path).exists()), fetched=False
    )
    downloader = Downloader(store, progress, out=out)
    try:
        for job in jobs:
            job.fd = os.open(job.part, os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(job.fd, job.entry.size)
            job.progress_fd = os.open(job.progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        with progress, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync") as pool:

            def task(job: FileJob, chunk: Chunk) -> None:
                downloader.fetch_chunk(job, chunk)
                downloader.advance_hash(job)

            futures = [
                pool.submit(task, job, chunk)
                for job in jobs
                for chunk in job.chunks
                if not chunk.done
            ]
            # Files with nothing left to fetch (empty, or fully resumed) are hashed here.
            futures += [pool.submit(downloader.advance_hash, job) for job in jobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                downloader.cancelled.set()
                for f in pending:
                    f.cancel()
                wait(pending)
                exc = failed[0].exception()
                assert exc is not None
                raise exc
        unfinished = [str(j.uri) for j in jobs if not j.finished]
        if unfinished:
            raise StorageError(f"files not completed: {', '.join(unfinished)}")
    finally:
        for job in jobs:
            for fd in (job.fd, job.progress_fd):
                if fd >= 0:
                    os.close(fd)
    print(progress.line(), file=out, flush=True)
    return len(jobs), progress.fetched, reused


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", required=True, help="s3://bucket/models/NAME/REVISION/ holding manifest.json"
    )
    parser.add_argument(
        "--cache-dir", required=True, type=Path, help="the cache volume, e.g. /cache"
    )
    parser.add_argument("--name", help="model name (default: the folder after models/ in --source)")
    parser.add_argument(
        "--verify",
        choices=["size", "full"],
        default="size",
        help="how a complete cache is checked: file sizes (default, instant) or a full sha256 rehash",
    )
    parser.add_argument("--workers", type=int, default=8, help="parallel ranged GETs (default 8)")
    parser.add_argument(
        "--chunk-mib", type=int, default=16, help="size of one ranged GET in MiB (default 16)"
    )
    parser.add_argument(
        "--reserve-mib",
        type=int,
        default=256,
        help="free space to leave on the volume after the download, in MiB (default 256)",
    )
    parser.add_argument(
        "--progress-interval", type=float, default=5.0, help="seconds between progress lines"
    )
    parser.add_argument(
        "--link",
        type=Path,
        help="also point this symlink at the synced model folder (pod-local, e.g. /run/tts/model for serve --model-dir)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=os.environ.get("TTS_TERMINATION_LOG"),
        help="also write the JSON summary here (the operator reads /dev/termination-log)",
    )


def run(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.chunk_mib < 1 or args.reserve_mib < 0:
        print("error: --workers and --chunk-mib must be >= 1, --reserve-mib >= 0", file=sys.stderr)
        return 2
    try:
        result = sync(
            args.source,
            args.cache_dir,
            name=args.name,
            verify=args.verify,
            workers=args.workers,
            chunk_size=args.chunk_mib * MIB,
            reserve_bytes=args.reserve_mib * MIB,
            progress_interval=args.progress_interval,
        )
    except StorageError as exc:
        message = f"sync failed: {exc}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        write_termination_log(
            args.termination_log,
            json.dumps({"event": "sync-failed", "message": message, "permanent": exc.permanent}),
        )
        return PERMANENT_EXIT if exc.permanent else 1
    if args.link is not None:
        link_atomic(args.link, result.path)
    line = json.dumps(result.summary())
    print(line, flush=True)
    write_termination_log(args.termination_log, line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tts-inference sync")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
