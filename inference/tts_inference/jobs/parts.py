"""Parts of a job split over the pods of an Indexed Job: where they live and when all are there.

Part I of N is ``<output key>.parts/<I>-of-<N>.wav``: float32 wav, tagged
with the request's fingerprint (``tts-fingerprint``), the chunk plan's
digest (``tts-plan``) and its chunk counts. The pod that finds every part of
its request joins them (``JobManager``) and deletes them.
"""

from __future__ import annotations

import hashlib
import logging

from tts_inference.engine.base import SynthesisRequest
from tts_inference.jobs.job import Job, JobFailed
from tts_inference.storage.bucket import Head, ObjectStore, S3Uri, StorageError

log = logging.getLogger("tts_inference.jobs")

PARTS_SUFFIX = ".parts/"


def parts_prefix(output: S3Uri) -> S3Uri:
    """Where the parts of a split job live: ``<output key>.parts/``."""
    return S3Uri(output.bucket, output.key + PARTS_SUFFIX)


def part_uri(output: S3Uri, part: int, parts: int) -> S3Uri:
    """Part ``part`` of ``parts``: ``<output key>.parts/<part>-of-<parts>.wav``."""
    return S3Uri(output.bucket, f"{output.key}{PARTS_SUFFIX}{part}-of-{parts}.wav")


def share(n: int, part: int, parts: int) -> tuple[int, int]:
    """The contiguous chunk range [lo, hi) part ``part`` of ``parts`` synthesizes."""
    return part * n // parts, (part + 1) * n // parts


def plan_digest(chunks: list[SynthesisRequest]) -> str:
    """What every part must agree on: the chunk texts, their seeds and parameters."""
    digest = hashlib.sha256()
    for chunk in chunks:
        p = chunk.params
        digest.update(
            f"{chunk.text}\0{p.seed}\0{p.speed}\0{p.nfe_step}\0{p.cfg_strength}\0".encode()
        )
    return digest.hexdigest()


def part_done(objects: ObjectStore, job: Job) -> Head | None:
    """This part in the bucket, made for this same request; None when it must be made."""
    uri = part_uri(job.output, job.part, job.parts)
    try:
        head = objects.head(uri)
    except StorageError as exc:
        raise JobFailed.of_storage(f"could not check part {uri}: {exc}", exc) from None
    if head is None or head.metadata.get("tts-fingerprint") != job.status.fingerprint:
        return None
    return head


def complete_parts(objects: ObjectStore, job: Job) -> list[tuple[S3Uri, Head]] | None:
    """Every part of this request, in order, when all are in the bucket; else None."""
    try:
        keys = set(objects.list_keys(parts_prefix(job.output)))
    except StorageError as exc:
        raise JobFailed.of_storage(
            f"could not list the parts under {parts_prefix(job.output)}: {exc}", exc
        ) from None
    wanted = [part_uri(job.output, i, job.parts) for i in range(job.parts)]
    if any(uri.key not in keys for uri in wanted):
        return None
    found: list[tuple[S3Uri, Head]] = []
    for uri in wanted:
        try:
            head = objects.head(uri)
        except StorageError as exc:
            raise JobFailed(f"could not check part {uri}: {exc}", retryable=True) from None
        if head is None or head.metadata.get("tts-fingerprint") != job.status.fingerprint:
            return None  # gone (joined meanwhile) or left by another request: not ours yet
        found.append((uri, head))
    if len({head.metadata.get("tts-plan") for _, head in found}) > 1:
        raise JobFailed(
            "the parts split the text differently (their reference transcripts differ?): "
            "give refText so every pod plans the same chunks",
            permanent=True,
        )
    return found


def delete_parts(objects: ObjectStore | None, output: S3Uri) -> None:
    """Remove every part of this output (best effort: a leftover is only storage)."""
    if objects is None:
        return
    prefix = parts_prefix(output)
    try:
        for key in objects.list_keys(prefix):
            objects.delete(S3Uri(prefix.bucket, key))
    except StorageError as exc:
        log.warning("could not delete the parts under %s: %s", prefix, exc)
