"""Mirror a folder of a Hugging Face model repo to local disk, for ``publish``.

``hf://ORG/REPO[/PATH][@REVISION]`` (or huggingface_hub's own form,
``hf://ORG/REPO@REVISION/PATH``) names the files under PATH of a model repo at
a branch, tag or commit (default: the repo's main branch). ``mirror`` resolves
the revision to a commit, lists the files under PATH, downloads exactly those
with huggingface_hub's ``snapshot_download`` into a folder, and checks each
against the hub's listing (size, and the git blob id or LFS sha256), so what
is published is byte for byte what the hub holds.

huggingface_hub reads its settings from the environment: HF_ENDPOINT (a
mirror or a private hub), HF_TOKEN (private and gated repos; it is never
printed), HF_HUB_DISABLE_XET. It is imported only when a mirror runs, so
``tts-inference sync`` never pays for it; the sync side only reads the bucket.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from tts_inference.sizes import MIB
from tts_inference.storage.bucket import StorageError

if TYPE_CHECKING:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

HF_PREFIX = "hf://"
_OTHER_REPO_TYPES = ("datasets", "spaces", "kernels", "buckets")


def is_hf_uri(value: str) -> bool:
    return value.startswith(HF_PREFIX)


@dataclass(frozen=True)
class HfUri:
    """A folder of a model repo: ``repo_id`` (org/name), ``path`` ("" for the root), ``revision``."""

    repo_id: str
    path: str
    revision: str | None

    @classmethod
    def parse(cls, uri: str) -> HfUri:
        usage = "expected hf://ORG/REPO[/PATH][@REVISION]"
        if not is_hf_uri(uri):
            raise StorageError(f"not an hf:// URI: {uri!r} ({usage})")
        body = uri[len(HF_PREFIX) :]
        parts = body.split("/")
        if parts[0] in _OTHER_REPO_TYPES:
            raise StorageError(f"{uri}: only model repos can be mirrored ({usage})")
        revision: str | None = None
        if len(parts) >= 2 and "@" in parts[1]:
            # huggingface_hub's form: hf://org/repo@revision/path
            parts[1], revision = parts[1].split("@", 1)
        elif "@" in body:
            # hf://org/repo/path@revision (the revision may hold '/', as refs/pr/1 does)
            body, revision = body.rsplit("@", 1)
            parts = body.split("/")
        if revision is not None and not revision:
            raise StorageError(f"{uri}: empty revision after '@' ({usage})")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise StorageError(f"{uri}: give an organisation and a repo ({usage})")
        segments = [p for p in parts[2:] if p]
        if any(p in {".", ".."} for p in segments):
            raise StorageError(f"{uri}: the path may not hold '.' or '..' ({usage})")
        return cls(f"{parts[0]}/{parts[1]}", "/".join(segments), revision)

    def __str__(self) -> str:
        path = f"/{self.path}" if self.path else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_PREFIX}{self.repo_id}{path}{rev}"


@dataclass(frozen=True)
class Mirrored:
    """A mirror on local disk: ``folder`` holds the files under the URI's path, at its root."""

    uri: HfUri
    commit: str
    folder: Path
    files: dict[str, int]  # path relative to folder -> size
    sha256: dict[str, str]  # the hub's sha256 of each LFS file, by path relative to folder
    seconds: float

    @property
    def size(self) -> int:
        return sum(self.files.values())


def _secrets() -> list[str]:
    from huggingface_hub import get_token

    values = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN"), get_token()]
    return [v for v in values if v]


def _scrub(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def explain(exc: BaseException, uri: HfUri) -> str:
    """A one-line message naming the hf:// URI and what to do; never a token."""
    import httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = _endpoint()
    if isinstance(exc, GatedRepoError):
        msg = (
            f"{uri}: {uri.repo_id} is gated on {endpoint}: accept its terms there and set "
            "HF_TOKEN to a token of that account"
        )
    elif isinstance(exc, RepositoryNotFoundError):
        msg = (
            f"{uri}: repository {uri.repo_id} not found on {endpoint} (if it is private, "
            "set HF_TOKEN to a token that can read it)"
        )
    elif isinstance(exc, RevisionNotFoundError):
        msg = f"{uri}: revision {uri.revision or 'main'!r} not found in {uri.repo_id} on {endpoint}"
    elif isinstance(exc, RemoteEntryNotFoundError):
        msg = f"{uri}: no files under {uri.path!r} in {uri.repo_id} at revision {uri.revision or 'main'!r}"
    elif isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        msg = f"{uri}: the hub at {endpoint} answered HTTP {status}"
        if status == 401:
            msg += ": it rejected the token in HF_TOKEN"
        elif status == 403:
            msg += ": the token in HF_TOKEN may not read this repo"
    elif isinstance(exc, OfflineModeIsEnabled):
        msg = f"{uri}: HF_HUB_OFFLINE is set, so the hub cannot be reached"
    elif isinstance(exc, (httpx.TransportError, LocalEntryNotFoundError, ConnectionError)):
        cause = exc.__cause__ or exc
        msg = (
            f"{uri}: cannot reach the hub at {endpoint} ({type(cause).__name__}): "
            "check HF_ENDPOINT and the network"
        )
    elif isinstance(exc, ValueError):  # huggingface_hub's validation of repo ids and revisions
        msg = f"{uri}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    else:
        msg = f"{uri}: downloading from {endpoint} failed ({type(exc).__name__}: {exc})"
    return _scrub(msg)


def _git_blob_id(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _list_files(api: HfApi, uri: HfUri, commit: str) -> list[RepoFile]:
    from huggingface_hub.hf_api import RepoFile

    prefix = f"{uri.path}/" if uri.path else ""
    return sorted(
        (
            entry
            for entry in api.list_repo_tree(
                uri.repo_id, path_in_repo=uri.path or None, recursive=True, revision=commit
            )
            if isinstance(entry, RepoFile) and entry.path.startswith(prefix)
        ),
        key=lambda entry: entry.path,
    )


def mirror(
    uri: HfUri,
    dest: Path,
    *,
    only: Sequence[str] | None = None,
    out: TextIO | None = None,
    check: Callable[[list[str]], Collection[str] | None] | None = None,
) -> Mirrored:
    """Download the files under ``uri`` (or just ``only``, names relative to its path) into ``dest``.

    ``dest`` must be a new or empty folder; the returned ``folder`` is
    ``dest/<path>``. ``check`` is called with the names to be downloaded
    (relative to the path) before any file is: what it raises stops the mirror,
    and names it returns are left out.
    Raises StorageError naming the URI on any failure.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()  # one summary line per mirror instead of carriage-return bars
    start = time.monotonic()
    api = HfApi()
    try:
        info = api.model_info(uri.repo_id, revision=uri.revision)
        if not info.sha:
            raise StorageError(
                f"{uri}: the hub at {_endpoint()} did not say which commit it serves"
            )
        commit = info.sha
        listing = _list_files(api, uri, commit)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(explain(exc, uri)) from None

    prefix = f"{uri.path}/" if uri.path else ""
    wanted = {entry.path[len(prefix) :]: entry for entry in listing}
    if only is not None:
        missing = [name for name in only if name not in wanted]
        if missing:
            raise StorageError(
                f"{uri}: {', '.join(missing)} not found in {uri.repo_id} at {commit[:12]}"
            )
        wanted = {name: wanted[name] for name in only}
    if not wanted:
        where = f"under {uri.path!r}" if uri.path else "at all"
        raise StorageError(f"{uri}: {uri.repo_id} at {commit[:12]} has no files {where}")
    if check is not None:
        for name in check(sorted(wanted)) or ():
            wanted.pop(name, None)
    total = sum(entry.size for entry in wanted.values())
    if out is not None:
        print(
            f"mirror {uri} at {commit[:12]}: {len(wanted)} files ({total / MIB:.1f} MiB) "
            f"from {_endpoint()}",
            file=out,
            flush=True,
        )

    dest.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            uri.repo_id,
            revision=commit,
            local_dir=dest,
            cache_dir=dest / ".cache" / "hub",
            # The exact files listed; escaped, as the patterns are fnmatch globs.
            allow_patterns=[glob.escape(prefix + name) for name in wanted],
        )
    except Exception as exc:
        raise StorageError(explain(exc, uri)) from None

    folder = dest / uri.path if uri.path else dest
    sha256: dict[str, str] = {}
    for name, entry in wanted.items():
        path = folder / name
        if not path.is_file():
            raise StorageError(f"{uri}: {name} was not downloaded")
        size = path.stat().st_size
        if size != entry.size:
            raise StorageError(f"{uri}: {name} is {size} bytes, the hub lists {entry.size}")
        if entry.lfs is not None:
            sha256[name] = entry.lfs.sha256  # publish checks it as it hashes the file
        elif entry.blob_id and _git_blob_id(path) != entry.blob_id:
            raise StorageError(
                f"{uri}: {name} does not match the hub's git blob id {entry.blob_id}"
            )
    return Mirrored(
        uri,
        commit,
        folder,
        {name: entry.size for name, entry in wanted.items()},
        sha256,
        time.monotonic() - start,
    )
