"""`tts-inference publish SRC s3://bucket/models/NAME/REVISION`: upload a model folder.

Every file is uploaded (multipart above the threshold), then ``manifest.json``
(path, size and sha256 of each file) is written last, so a sync never sees a
half-published revision. A revision is immutable: publishing over an existing
manifest is refused unless ``--force``, because caches trust a revision they
have already synced. Files already in the bucket with the same size and sha256
(from an interrupted publish) are not sent again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from tts_inference.cache.store import CacheError, S3Client, S3Uri, describe, make_client
from tts_inference.cache.sync import COMPLETE, MANIFEST, human_bytes, safe_relpath, sha256_file

MIB = 1024 * 1024


@dataclass(frozen=True)
class PublishResult:
    uri: str
    files: int
    bytes_uploaded: int
    files_skipped: int
    digest: str
    seconds: float


def collect_files(src: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for every file to publish, sorted, ours excluded."""
    if not src.is_dir():
        raise CacheError(f"{src} is not a folder")
    out = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if rel in {MANIFEST, COMPLETE} or any(part.startswith(".") for part in rel.split("/")):
            continue
        if not safe_relpath(rel):
            raise CacheError(f"cannot publish {rel!r}: reserved file name")
        out.append((rel, path))
    if not out:
        raise CacheError(f"{src} holds no files to publish")
    return out


def build_manifest(entries: list[dict[str, object]]) -> bytes:
    return json.dumps({"files": entries}, indent=1, sort_keys=True).encode() + b"\n"


def _head(client: S3Client, uri: S3Uri) -> dict[str, object] | None:
    try:
        return dict(client.head_object(Bucket=uri.bucket, Key=uri.key))
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise CacheError(describe(exc, uri)) from None


def publish(
    src: Path,
    dest: str,
    *,
    force: bool = False,
    multipart_mib: int = 64,
    client: S3Client | None = None,
    out: TextIO = sys.stderr,
) -> PublishResult:
    start = time.monotonic()
    target = S3Uri.parse(dest)
    if not target.key:
        raise CacheError(f"{dest}: give a folder, e.g. s3://bucket/models/NAME/REVISION")
    client = client or make_client()
    manifest_uri = S3Uri(target.bucket, target.prefix + MANIFEST)
    if _head(client, manifest_uri) is not None and not force:
        raise CacheError(
            f"{manifest_uri} exists: revisions are immutable (caches trust what they synced); "
            "publish a new revision, or pass --force"
        )
    files = collect_files(src)
    config = TransferConfig(
        multipart_threshold=multipart_mib * MIB,
        multipart_chunksize=multipart_mib * MIB,
        max_concurrency=8,
    )
    entries: list[dict[str, object]] = []
    uploaded = skipped = 0
    for rel, path in files:
        size = path.stat().st_size
        digest = sha256_file(path)
        entries.append({"path": rel, "size": size, "sha256": digest})
        uri = S3Uri(target.bucket, target.prefix + rel)
        head = _head(client, uri)
        metadata = head.get("Metadata", {}) if head else {}
        if (
            head
            and head.get("ContentLength") == size
            and isinstance(metadata, dict)
            and metadata.get("sha256") == digest
        ):
            skipped += 1
            continue
        print(f"upload {rel} ({human_bytes(size)}) -> {uri}", file=out, flush=True)
        try:
            client.upload_file(
                str(path),
                uri.bucket,
                uri.key,
                ExtraArgs={"Metadata": {"sha256": digest}},
                Config=config,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise CacheError(f"upload failed: {describe(exc, uri)}") from None
        except Exception as exc:  # boto3's S3UploadFailedError wraps the ClientError
            cause = exc.__cause__ or exc
            raise CacheError(f"upload failed: {describe(cause, uri)}") from None
        uploaded += size
    raw = build_manifest(entries)
    try:
        client.put_object(
            Bucket=manifest_uri.bucket,
            Key=manifest_uri.key,
            Body=raw,
            ContentType="application/json",
        )
    except botocore.exceptions.ClientError as exc:
        raise CacheError(f"writing the manifest failed: {describe(exc, manifest_uri)}") from None
    return PublishResult(
        str(S3Uri(target.bucket, target.prefix)),
        len(files),
        uploaded,
        skipped,
        hashlib.sha256(raw).hexdigest(),
        time.monotonic() - start,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="the model folder to upload")
    parser.add_argument("dest", help="s3://bucket/models/NAME/REVISION")
    parser.add_argument("--force", action="store_true", help="overwrite an existing revision")
    parser.add_argument(
        "--multipart-mib", type=int, default=64, help="multipart threshold and part size in MiB"
    )


def run(args: argparse.Namespace) -> int:
    try:
        result = publish(args.src, args.dest, force=args.force, multipart_mib=args.multipart_mib)
    except CacheError as exc:
        print(f"error: publish failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(
        json.dumps(
            {
                "event": "publish-complete",
                "uri": result.uri,
                "files": result.files,
                "bytesUploaded": result.bytes_uploaded,
                "filesSkipped": result.files_skipped,
                "manifestDigest": result.digest,
                "seconds": round(result.seconds, 3),
            }
        ),
        flush=True,
    )
    return 0
