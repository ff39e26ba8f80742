"""`tts-inference publish SRC s3://bucket/models/NAME/REVISION`: upload a model folder.

SRC is a local folder, or ``hf://ORG/REPO/PATH[@REVISION]``: the files under
PATH of a Hugging Face model repo are mirrored once into a temporary folder
(see ``tts_inference.cache.hf``) and published from there, at the root of the
revision, exactly as a local folder would be. ``--vocoder`` (an hf:// Vocos
repo such as hf://charactr/vocos-mel-24khz, or a local folder holding its
files) adds the vocoder's config.yaml and pytorch_model.bin under ``vocos/``.
The immutable-revision check runs before anything is downloaded.

A folder laid out as the hub lays out an F5-TTS model (``F5TTS_v1_Base/``:
``model_1250000.safetensors``, ``vocab.txt``; no model.yaml) gets the
``model.yaml`` the server needs, written from the installed f5-tts's own
config of that model (``tts_inference.model_folder.plan``: the model is
``--model`` or the folder's name; ``--model-config`` gives another arch), and
f5-tts's own vocab.txt where the folder has none. Whether that can be done is
checked against the hub's listing before any byte is downloaded.

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
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from tts_inference import model_folder
from tts_inference.cache.sync import COMPLETE, MANIFEST, safe_relpath
from tts_inference.sizes import MIB
from tts_inference.storage.bucket import ObjectStore, S3Client, S3Uri, StorageError, make_client
from tts_inference.storage.files import sha256_file
from tts_inference.storage.progress import human_bytes


@dataclass(frozen=True)
class PublishResult:
    uri: str
    files: int
    bytes_uploaded: int
    files_skipped: int
    digest: str
    seconds: float
    source: str | None = None  # the hf:// URI mirrored, with the commit it resolved to
    model_config: str | None = None  # where a model.yaml written by publish took the arch from


def collect_files(src: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for every file to publish, sorted, ours excluded."""
    if not src.is_dir():
        raise StorageError(f"{src} is not a folder")
    out = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        if rel in {MANIFEST, COMPLETE} or any(part.startswith(".") for part in rel.split("/")):
            continue
        if not safe_relpath(rel):
            raise StorageError(f"cannot publish {rel!r}: reserved file name")
        out.append((rel, path))
    if not out:
        raise StorageError(f"{src} holds no files to publish")
    return out


def build_manifest(entries: list[dict[str, object]]) -> bytes:
    return json.dumps({"files": entries}, indent=1, sort_keys=True).encode() + b"\n"


def _target(dest: str) -> S3Uri:
    target = S3Uri.parse(dest)
    if not target.key:
        raise StorageError(f"{dest}: give a folder, e.g. s3://bucket/models/NAME/REVISION")
    return target


def _refuse_existing(store: ObjectStore, target: S3Uri, force: bool) -> S3Uri:
    """The revision's manifest URI; raises if the revision exists and ``force`` is off."""
    manifest_uri = S3Uri(target.bucket, target.prefix + MANIFEST)
    if store.head(manifest_uri) is not None and not force:
        raise StorageError(
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
    extra_files: Mapping[str, Path] | None = None,
    skip: Collection[str] = (),
) -> PublishResult:
    """Upload ``src`` (less ``skip``, plus ``extra_files``: relative path -> file) to ``dest``.

    ``expect_sha256`` (relative path -> sha256, e.g. from the hub's listing) is
    checked as each file is hashed, before anything of it is uploaded.
    """
    start = time.monotonic()
    target = _target(dest)
    made = client or make_client()
    store = ObjectStore(lambda: made, part_bytes=multipart_mib * MIB, max_concurrency=8)
    manifest_uri = _refuse_existing(store, target, force)
    files = [(rel, path) for rel, path in collect_files(src) if rel not in skip]
    held = {rel for rel, _ in files}
    for rel, path in (extra_files or {}).items():
        if rel in held:
            raise StorageError(f"{src} already holds {rel}")
        files.append((rel, path))
    files.sort()
    expected = dict(expect_sha256 or {})
    entries: list[dict[str, object]] = []
    uploaded = skipped = 0
    for rel, path in files:
        size = path.stat().st_size
        digest = sha256_file(path)
        if rel in expected and expected[rel] != digest:
            raise StorageError(
                f"{rel}: sha256 {digest} differs from the source's {expected[rel]}; not uploaded"
            )
        entries.append({"path": rel, "size": size, "sha256": digest})
        uri = S3Uri(target.bucket, target.prefix + rel)
        head = store.head(uri)
        if head and head.size == size and head.metadata.get("sha256") == digest:
            skipped += 1
            continue
        print(f"upload {rel} ({human_bytes(size)}) -> {uri}", file=out, flush=True)
        try:
            store.upload_file(str(path), uri, None, metadata={"sha256": digest}, what="model")
        except StorageError as exc:
            raise StorageError(f"upload failed: {exc}", permanent=exc.permanent) from None
        uploaded += size
    raw = build_manifest(entries)
    try:
        store.put_bytes(manifest_uri, raw, "application/json", what="manifest")
    except StorageError as exc:
        raise StorageError(f"writing the manifest failed: {exc}", permanent=exc.permanent) from None
    return PublishResult(
        str(S3Uri(target.bucket, target.prefix)),
        len(files),
        uploaded,
        skipped,
        hashlib.sha256(raw).hexdigest(),
        time.monotonic() - start,
    )


def _folder_files(folder: Path) -> list[str]:
    return [rel for rel, _ in collect_files(folder)]


def _check_vocoder_slot(names: list[str], where: str) -> None:
    if any(name.split("/")[0] == model_folder.VOCODER_DIR for name in names):
        raise StorageError(
            f"{where} already holds {model_folder.VOCODER_DIR}/: leave out --vocoder"
        )


def _local_vocoder(path: Path) -> dict[str, Path]:
    """vocos/<file> -> file, for a local folder holding a Vocos repo's two files."""
    files = {name: path / name for name in model_folder.VOCODER_FILES}
    missing = [name for name, file in files.items() if not file.is_file()]
    if missing:
        raise StorageError(
            f"--vocoder {path}: expected a folder holding {' and '.join(model_folder.VOCODER_FILES)} "
            f"(hf://{model_folder.VOCODER_REPO}'s files); missing {', '.join(missing)}"
        )
    return {f"{model_folder.VOCODER_DIR}/{name}": file for name, file in files.items()}


def _skipped(completion: model_folder.Completion | None) -> frozenset[str]:
    return completion.skip if completion is not None else frozenset()


def publish_source(
    source: str,
    dest: str,
    *,
    vocoder: str | None = None,
    model: str | None = None,
    model_config: Path | None = None,
    force: bool = False,
    multipart_mib: int = 64,
    client: S3Client | None = None,
    out: TextIO = sys.stderr,
    work_dir: Path | None = None,
) -> PublishResult:
    """Publish ``source`` (a local folder or hf://ORG/REPO/PATH[@REV]) to ``dest``, once.

    The files under PATH land at the revision's root, the vocoder's (``vocoder``:
    an hf:// Vocos repo or a local folder with its files) under ``vocos/``; a
    folder laid out as the hub lays out an F5-TTS model gets its model.yaml
    (see ``model_folder.plan``). Nothing is downloaded when the revision
    already exists, or when the hub's listing shows the folder cannot be
    completed. The temporary folder (under ``work_dir``, default TMPDIR) is
    always removed; the source folder is never written to.
    """
    from tts_inference.cache import hf

    start = time.monotonic()
    model_uri = hf.HfUri.parse(source) if hf.is_hf_uri(source) else None
    vocoder_uri = hf.HfUri.parse(vocoder) if vocoder and hf.is_hf_uri(vocoder) else None
    vocoder_dir = Path(vocoder) if vocoder and vocoder_uri is None else None
    if model_config is not None and not model_config.is_file():
        raise StorageError(f"--model-config {model_config}: no such file")
    target = _target(dest)
    made = client or make_client()
    _refuse_existing(ObjectStore(lambda: made), target, force)  # before any byte comes from the hub
    vocoder_names = (
        [f"{model_folder.VOCODER_DIR}/{name}" for name in model_folder.VOCODER_FILES]
        if vocoder
        else []
    )
    extra: dict[str, Path] = _local_vocoder(vocoder_dir) if vocoder_dir is not None else {}
    where = str(model_uri) if model_uri is not None else source
    folder_name = (
        model_uri.path.rsplit("/", 1)[-1] or None
        if model_uri is not None
        else Path(source).absolute().name
    )

    def check(names: list[str]) -> model_folder.Completion | None:
        """What the folder's files (names relative to it) need; raises StorageError if impossible."""
        if vocoder:
            _check_vocoder_slot(names, where)
        try:
            return model_folder.plan(
                [*names, *vocoder_names],
                folder_name=folder_name,
                where=where,
                model=model,
                config_file=model_config,
            )
        except model_folder.ModelFolderError as exc:
            raise StorageError(str(exc)) from None

    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix="tts-publish-", dir=work_dir))
    try:
        expected: dict[str, str] = {}
        sources: list[str] = []
        not_mirrored: set[str] = set()

        def check_listing(names: list[str]) -> frozenset[str]:
            skip = _skipped(check(names))
            not_mirrored.update(skip)
            return skip

        if model_uri is not None:
            mirrored = hf.mirror(model_uri, stage / "model", out=out, check=check_listing)
            folder = mirrored.folder
            expected.update(mirrored.sha256)
            sources.append(str(replace(model_uri, revision=mirrored.commit)))  # pinned
        else:
            folder = Path(source)
            check(_folder_files(folder))  # before the vocoder is downloaded
        if vocoder_uri is not None:
            voc = hf.mirror(
                vocoder_uri, stage / "vocoder", only=model_folder.VOCODER_FILES, out=out
            )
            for name in voc.files:
                extra[f"{model_folder.VOCODER_DIR}/{name}"] = voc.folder / name
                if name in voc.sha256:
                    expected[f"{model_folder.VOCODER_DIR}/{name}"] = voc.sha256[name]
            sources.append(str(replace(vocoder_uri, revision=voc.commit)))
        if sources:
            print(
                f"mirrored {', '.join(sources)} in {time.monotonic() - start:.1f}s",
                file=out,
                flush=True,
            )
        completion = check(_folder_files(folder))  # the files as they are on disk now
        if completion is not None:
            written = stage / model_folder.CONFIG_NAME
            written.write_bytes(completion.model_yaml())
            extra[model_folder.CONFIG_NAME] = written
            extra.update(completion.add_files)
            added = ", ".join(sorted(completion.add_files)) or "nothing else"
            left_out = ", ".join(sorted(not_mirrored | completion.skip)) or "nothing"
            print(
                f"no {model_folder.CONFIG_NAME} in {where}: writing one for "
                f"{completion.config['name']} from {completion.source} "
                f"(checkpoint {completion.config['checkpoint']}; added {added}; "
                f"left out {left_out})",
                file=out,
                flush=True,
            )
        result = publish(
            folder,
            dest,
            force=force,
            multipart_mib=multipart_mib,
            client=made,
            out=out,
            expect_sha256=expected,
            extra_files=extra,
            skip=_skipped(completion),
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return replace(
        result,
        seconds=time.monotonic() - start,
        source=" ".join(sources) or None,
        model_config=completion.source if completion is not None else None,
    )


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
        metavar="HF_URI_OR_DIR",
        help="also publish this Vocos vocoder's config.yaml and pytorch_model.bin into vocos/: "
        f"an hf:// repo (hf://{model_folder.VOCODER_REPO}) or a local folder holding them",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="for a folder without model.yaml: which f5-tts model it is "
        f"({model_folder.known_names()}; default: the folder's name)",
    )
    parser.add_argument(
        "--model-config",
        type=Path,
        metavar="FILE",
        help="for a folder without model.yaml: the model's config in f5-tts's format "
        "(as f5_tts/configs/*.yaml), for an arch f5-tts does not ship",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where an hf:// source is staged before upload (default: TMPDIR); needs room for the model",
    )


def run(args: argparse.Namespace) -> int:
    try:
        result = publish_source(
            args.src,
            args.dest,
            vocoder=args.vocoder,
            model=args.model,
            model_config=args.model_config,
            force=args.force,
            multipart_mib=args.multipart_mib,
            work_dir=args.work_dir,
        )
    except StorageError as exc:
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
    if result.model_config:
        summary["modelConfig"] = result.model_config
    print(json.dumps(summary), flush=True)
    return 0
