"""A stand-in for the Hugging Face Hub: a threaded HTTP server on 127.0.0.1.

It serves model repos from memory and implements only what huggingface_hub
1.x's ``model_info``, ``list_repo_tree`` and ``snapshot_download`` call:

- ``GET /api/models/{org}/{repo}[/revision/{rev}]``: ``sha`` and ``siblings``;
- ``GET /api/models/{org}/{repo}/tree/{rev}[/{path}]?recursive=``: files
  (``oid`` = git blob id, ``size``, and ``lfs`` {oid: sha256, size} for LFS
  files) and directories, as one page;
- ``HEAD``/``GET /{org}/{repo}/resolve/{rev}/{path}``: a regular file answers
  200 with X-Repo-Commit, ETag (git blob id) and Content-Length; an LFS file
  (.safetensors, .bin, ...) answers 302 with X-Repo-Commit, X-Linked-Etag
  (sha256), X-Linked-Size and a Location on another host name
  (``localhost``), as the hub redirects to its CDN: the client then fetches
  ``/cdn/{sha256}/{org}/{repo}/{path}`` there, without its token.

It never advertises Xet (no X-Xet-* headers, no ``xetHash``), so clients use
plain HTTP. Errors carry the hub's X-Error-Code (RepoNotFound,
RevisionNotFound, EntryNotFound) so huggingface_hub raises its own
exceptions. A repo added with a token answers 401 to requests without
``Authorization: Bearer <token>``, as a private repo does.

Every request is counted by (method, path), and every body sent by repo file
(``org/repo/path``), so a test can assert each file left "the hub" once.

``f5_hub_repos`` lays a model folder's files out as the real hub lays out
f5-tts's pretrained models and the vocos vocoder (the names f5-tts 1.1.22's
``f5_tts.api.F5TTS`` and ``load_vocoder`` download), so tests can publish
``hf://SWivid/F5-TTS/F5TTS_v1_Base`` exactly as a user does.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".pth", ".onnx")
DATE = "2025-03-01T12:00:00.000Z"

VOCOS_REPO = "charactr/vocos-mel-24khz"
#: Where the hub keeps each pretrained model, as f5-tts 1.1.22 downloads it: the repo and the
#: checkpoint of hf://SWivid/<repo>/<name>/model_<step>.safetensors (f5_tts/api.py), and the
#: other checkpoint file the hub keeps beside it (the same weights as a torch pickle).
F5_HUB: dict[str, tuple[str, str, str | None]] = {
    "F5TTS_v1_Base": ("SWivid/F5-TTS", "model_1250000.safetensors", None),
    "F5TTS_Base": ("SWivid/F5-TTS", "model_1200000.safetensors", "model_1200000.pt"),
    "E2TTS_Base": ("SWivid/E2-TTS", "model_1200000.safetensors", "model_1200000.pt"),
}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> path -> data
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    token: str | None = None

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


@dataclass
class HubTraffic:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (method, path)
    downloads: Counter[str] = field(default_factory=Counter)  # bodies sent, by org/repo/path
    body_bytes: Counter[str] = field(default_factory=Counter)  # body bytes sent, by org/repo/path
    cdn_authorized: int = 0  # CDN requests that carried an Authorization header
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.downloads.clear()
            self.body_bytes.clear()
            self.cdn_authorized = 0

    @property
    def total_requests(self) -> int:
        with self.lock:
            return sum(self.requests.values())


class FakeHub:
    def __init__(self, cdn_host: str = "localhost") -> None:
        self.repos: dict[str, Repo] = {}
        self.traffic = HubTraffic()
        self.cdn_host = cdn_host
        self.blobs: dict[str, bytes] = {}  # sha256 -> data (LFS files)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                split = urlsplit(self.path)
                with hub.traffic.lock:
                    hub.traffic.requests[(self.command, unquote(split.path))] += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                hub._route(self, split.path, parse_qs(split.query))

            do_GET = do_HEAD = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        refs: tuple[str, ...] = ("main",),
        token: str | None = None,
    ) -> str:
        """Add a commit holding ``files`` to ``repo_id`` (created if new); returns its sha."""
        repo = self.repos.setdefault(repo_id, Repo(repo_id))
        if token is not None:
            repo.token = token
        listing = "".join(f"{p}\0{git_blob_id(d)}\n" for p, d in sorted(files.items()))
        sha = hashlib.sha1(f"{repo_id}\n{len(repo.commits)}\n{listing}".encode()).hexdigest()
        repo.commits[sha] = dict(files)
        for ref in refs:
            repo.refs[ref] = sha
        for path, data in files.items():
            if is_lfs(path):
                self.blobs[hashlib.sha256(data).hexdigest()] = data
        return sha

    # --- answers -----------------------------------------------------------------------------

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        count_as: str | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        handler.wfile.write(body)
        if count_as is not None:
            with self.traffic.lock:
                self.traffic.downloads[count_as] += 1
                self.traffic.body_bytes[count_as] += len(body)

    def _error(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        code: str | None,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._send(handler, status, json.dumps({"error": message}).encode(), extra)

    def _repo(self, handler: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
        """The repo, or None after answering 404/401 as the hub does."""
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(handler, 404, "RepoNotFound", "Repository not found")
            return None
        if repo.token is not None:
            auth = handler.headers.get("Authorization")
            if auth is None:
                self._error(handler, 401, "RepoNotFound", "Invalid username or password.")
                return None
            if auth != f"Bearer {repo.token}":
                self._error(handler, 401, None, "Invalid credentials in Authorization header")
                return None
        return repo

    def _lookup(
        self, handler: BaseHTTPRequestHandler, repo_id: str, rev: str
    ) -> tuple[Repo, str, dict[str, bytes]] | None:
        """(repo, commit sha, files), or None after answering with the hub's error."""
        repo = self._repo(handler, repo_id)
        if repo is None:
            return None
        sha = repo.resolve(rev)
        if sha is None:
            self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, sha, repo.commits[sha]

    def _route(
        self, handler: BaseHTTPRequestHandler, raw_path: str, query: dict[str, list[str]]
    ) -> None:
        # Split before unquoting: revisions and tree paths arrive with '/' as %2F.
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            if not rest or (rest[0] == "revision" and len(rest) >= 2):
                self._model_info(handler, repo_id, "/".join(rest[1:]) or "main")
                return
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                self._tree(handler, repo_id, rest[1], "/".join(rest[2:]), recursive)
                return
        elif parts[0] == "cdn" and len(parts) >= 5:
            self._cdn(handler, parts[1], "/".join(parts[2:]))
            return
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve(handler, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            return
        self._error(handler, 404, None, f"no route for {raw_path}")

    def _model_info(self, handler: BaseHTTPRequestHandler, repo_id: str, rev: str) -> None:
        found = self._lookup(handler, repo_id, rev)
        if found is None:
            return
        repo, sha, files = found
        org, _ = repo_id.split("/", 1)
        doc = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": org,
            "sha": sha,
            "lastModified": DATE,
            "createdAt": DATE,
            "private": repo.token is not None,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }
        self._send(handler, 200, json.dumps(doc).encode())

    def _tree(
        self, handler: BaseHTTPRequestHandler, repo_id: str, rev: str, path: str, recursive: bool
    ) -> None:
        found = self._lookup(handler, repo_id, rev)
        if found is None:
            return
        _, _, files = found
        prefix = f"{path}/" if path else ""
        below = {p: d for p, d in files.items() if p.startswith(prefix)}
        if not below:
            self._error(handler, 404, "EntryNotFound", f"{path} does not exist on {rev}")
            return
        entries: dict[str, dict[str, object]] = {}
        for p, data in sorted(below.items()):
            rel = p[len(prefix) :].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                folder = prefix + "/".join(rel[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder,
                        {
                            "type": "directory",
                            "oid": hashlib.sha1(folder.encode()).hexdigest(),
                            "size": 0,
                            "path": folder,
                        },
                    )
            if not recursive and len(rel) > 1:
                continue
            entry: dict[str, object] = {
                "type": "file",
                "oid": git_blob_id(data),
                "size": len(data),
                "path": p,
            }
            if is_lfs(p):
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries[p] = entry
        self._send(handler, 200, json.dumps(list(entries.values())).encode())

    def _resolve(self, handler: BaseHTTPRequestHandler, repo_id: str, rev: str, path: str) -> None:
        found = self._lookup(handler, repo_id, rev)
        if found is None:
            return
        _, sha, files = found
        data = files.get(path)
        if data is None:
            self._error(
                handler, 404, "EntryNotFound", "Entry not found", headers={"X-Repo-Commit": sha}
            )
            return
        if is_lfs(path):
            digest = hashlib.sha256(data).hexdigest()
            location = f"http://{self.cdn_host}:{self.port}/cdn/{digest}/{repo_id}/{quote(path)}"
            self._send(
                handler,
                302,
                headers={
                    "X-Repo-Commit": sha,
                    "X-Linked-Etag": f'"{digest}"',
                    "X-Linked-Size": str(len(data)),
                    "ETag": f'"{git_blob_id(data)}"',
                    "Location": location,
                },
                content_type="text/plain",
            )
            return
        self._send(
            handler,
            200,
            data,
            headers={
                "X-Repo-Commit": sha,
                "ETag": f'"{git_blob_id(data)}"',
            },
            content_type="application/octet-stream",
            count_as=f"{repo_id}/{path}",
        )

    def _cdn(self, handler: BaseHTTPRequestHandler, digest: str, repo_path: str) -> None:
        if handler.headers.get("Authorization") is not None:
            with self.traffic.lock:
                self.traffic.cdn_authorized += 1
        data = self.blobs.get(digest)
        if data is None:
            self._send(handler, 404, b"NoSuchKey", content_type="text/plain")
            return
        self._send(
            handler,
            200,
            data,
            headers={"ETag": f'"{digest}"'},
            content_type="application/octet-stream",
            count_as=repo_path,
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def fake_hub(cdn_host: str = "localhost") -> Iterator[FakeHub]:
    hub = FakeHub(cdn_host)
    try:
        yield hub
    finally:
        hub.close()


def hub_environment(base: Mapping[str, str], hub: FakeHub, home: Path, tmp: Path) -> dict[str, str]:
    """``base`` pointed at the fake hub: every HF_* and TRANSFORMERS_* setting of the
    test process dropped (an engine imported earlier sets HF_HUB_OFFLINE, f5-tts may set
    TRANSFORMERS_OFFLINE), then the hub's endpoint, a private HF_HOME and TMPDIR."""
    env = {
        k: v for k, v in base.items() if not k.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_"))
    }
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TMPDIR=str(tmp),
    )
    return env


def _pickled_checkpoint(safetensors_file: Path) -> bytes:
    """The same weights as a .pt checkpoint: {"ema_model_state_dict": {"ema_model.*": ...}}."""
    import io

    import torch
    from safetensors.torch import load_file

    buffer = io.BytesIO()
    torch.save({"ema_model_state_dict": load_file(str(safetensors_file))}, buffer)
    return buffer.getvalue()


def f5_hub_files(name: str, model_dir: Path) -> tuple[str, dict[str, bytes]]:
    """(repo, files) of model ``name`` on the hub, holding the weights of ``model_dir``.

    ``model_dir`` is a folder make-tiny-model wrote (its checkpoint already has the
    published key layout: "ema_model.transformer.*", "step", "initted"). Only
    F5TTS_v1_Base's folder holds a vocab.txt; no folder holds a model.yaml.
    """
    repo, checkpoint, pickled = F5_HUB[name]
    source = model_dir / "model_1250000.safetensors"
    files = {
        f"{name}/{checkpoint}": source.read_bytes(),
        "README.md": f"# {repo}\n".encode(),
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    if name == "F5TTS_v1_Base":
        files[f"{name}/vocab.txt"] = (model_dir / "vocab.txt").read_bytes()
    if pickled is not None:
        files[f"{name}/{pickled}"] = _pickled_checkpoint(source)
    return repo, files


def vocos_hub_files(model_dir: Path) -> dict[str, bytes]:
    """charactr/vocos-mel-24khz's files, holding the vocoder of ``model_dir``."""
    return {
        "config.yaml": (model_dir / "vocos" / "config.yaml").read_bytes(),
        "pytorch_model.bin": (model_dir / "vocos" / "pytorch_model.bin").read_bytes(),
        "README.md": b"# vocos-mel-24khz\n",
    }
