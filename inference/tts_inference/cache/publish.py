"""`tts-inference publish SRC s3://bucket/models/NAME/REVISION`: upload a model folder.

SRC is a local folder, or ``hf://ORG/REPO/PATH[@REVISION]``: the files under
PATH of a Hugging Face model repo are mirrored once into a temporary folder
(see ``tts_inference.cache.hf``) and published from there, at the root of the
revision, exactly as a local folder would be; ``--vocoder hf://ORG/REPO`` adds
that Vocos repo's config.yaml and pytorch_model.bin under ``vocos/``. The
immutable-revision check runs before anything is downloaded.

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
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
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
    source: str | None = None  # the hf:// URI mirrored, with the commit it resolved to


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


def _target(dest: str) -> S3Uri:
    target = S3Uri.parse(dest)
    if not target.key:
        raise CacheError(f"{dest}: give a folder, e.g. s3://bucket/models/NAME/REVISION")
    return target


def _refuse_existing(client: S3Client, target: S3Uri, force: bool) -> S3Uri:
    """The revision's manifest URI; raises if the revision exists and ``force`` is off."""
    manifest_uri = S3Uri(target.bucket, target.prefix + MANIFEST)
    if _head(client, manifest_uri) is not None and not force:
        raise CacheError(
            f"{manifest_uri} exists: revisions are immutable (caches trust what they synced); "
            "publish a new revision, or pass --force"
        )
    return manifest_uri


def publish(
    src: Path,
    dest: str,
    *,
    force: bool = False,
    multipart_mib: int = 64,
    client: S3Client | None = None,
    out: TextIO = sys.stderr,
    expect_sha256: Mapping[str, str] | None = None,
) -> PublishResult:
    """Upload ``src`` to ``dest``, manifest last.

    ``expect_sha256`` (relative path -> sha256, e.g. from the hub's listing) is
    checked as each file is hashed, before anything of it is uploaded.
    """
    start = time.monotonic()
    target = _target(dest)
    client = client or make_client()
    manifest_uri = _refuse_existing(client, target, force)
    files = collect_files(src)
    expected = dict(expect_sha256 or {})
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
        if rel in expected and expected[rel] != digest:
            raise CacheError(
                f"{rel}: sha256 {digest} differs from the source's {expected[rel]}; not uploaded"
            )
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


def publish_hf(
    source: str,
    dest: str,
    *,
    vocoder: str | None = None,
    force: bool = False,
    multipart_mib: int = 64,
    client: S3Client | None = None,
    out: TextIO = sys.stderr,
    work_dir: Path | None = None,
) -> PublishResult:
    """Mirror ``source`` (hf://ORG/REPO/PATH[@REV]) and publish it to ``dest``, once.

    The files under PATH land at the revision's root, the vocoder's (when given)
    under ``vocos/``. Nothing is downloaded when the revision already exists.
    The temporary folder (under ``work_dir``, default TMPDIR) is always removed.
    """
    from tts_inference.cache import hf

    start = time.monotonic()
    model_uri = hf.HfUri.parse(source)
    vocoder_uri = hf.HfUri.parse(vocoder) if vocoder else None
    target = _target(dest)
    client = client or make_client()
    _refuse_existing(client, target, force)  # before any byte comes from the hub
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="tts-publish-hf-", dir=work_dir))
    try:
        model = hf.mirror(model_uri, stage / "model", out=out)
        expected = dict(model.sha256)
        sources = [str(replace(model_uri, revision=model.commit))]  # pinned to the commit
        if vocoder_uri is not None:
            if any(name.split("/")[0] == "vocos" for name in model.files):
                raise CacheError(f"{model_uri} already holds vocos/: leave out --vocoder")
            voc = hf.mirror(vocoder_uri, stage / "vocoder", only=hf.VOCODER_FILES, out=out)
            (model.folder / "vocos").mkdir()
            for name in voc.files:
                (voc.folder / name).rename(model.folder / "vocos" / name)
                if name in voc.sha256:
                    expected[f"vocos/{name}"] = voc.sha256[name]
            sources.append(str(replace(vocoder_uri, revision=voc.commit)))
        print(
            f"mirrored {', '.join(sources)} in {time.monotonic() - start:.1f}s",
            file=out,
            flush=True,
        )
        result = publish(
            model.folder,
            dest,
            force=force,
            multipart_mib=multipart_mib,
            client=client,
            out=out,
            expect_sha256=expected,
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return replace(result, seconds=time.monotonic() - start, source=" ".join(sources))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        help="the model folder to upload, or hf://ORG/REPO/PATH[@REVISION] to mirror that "
        "folder of a Hugging Face model repo (HF_ENDPOINT and HF_TOKEN are honoured)",
    )
    parser.add_argument("dest", help="s3://bucket/models/NAME/REVISION")
    parser.add_argument("--force", action="store_true", help="overwrite an existing revision")
    parser.add_argument(
        "--multipart-mib", type=int, default=64, help="multipart threshold and part size in MiB"
    )
    parser.add_argument(
        "--vocoder",
        metavar="HF_URI",
        help="with an hf:// source: also mirror this Vocos repo's config.yaml and "
        "pytorch_model.bin into vocos/ (e.g. hf://charactr/vocos-mel-24khz)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where an hf:// source is staged before upload (default: TMPDIR); needs room for the model",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.src.startswith("hf://"):
            result = publish_hf(
                args.src,
                args.dest,
                vocoder=args.vocoder,
                force=args.force,
                multipart_mib=args.multipart_mib,
                work_dir=args.work_dir,
            )
        elif args.vocoder:
            raise CacheError("--vocoder needs an hf:// source; put the vocoder in SRC/vocos/")
        else:
            result = publish(
                Path(args.src), args.dest, force=args.force, multipart_mib=args.multipart_mib
            )
    except CacheError as exc:
        print(f"error: publish failed: {exc}", file=sys.stderr, flush=True)
        return 1
    summary: dict[str, object] = {
        "event": "publish-complete",
        "uri": result.uri,
        "files": result.files,
        "bytesUploaded": result.bytes_uploaded,
        "filesSkipped": result.files_skipped,
        "manifestDigest": result.digest,
        "seconds": round(result.seconds, 3),
    }
    if result.source:
        summary["source"] = result.source
    print(json.dumps(summary), flush=True)
    return 0
