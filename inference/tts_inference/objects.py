"""The server's view of the bucket: small objects, whole-or-nothing uploads, allowed buckets.

Voices and jobs read and write objects through one ``ObjectStore``. Every call
blocks (boto3), so the async layers call it through ``asyncio.to_thread``.
Clients are B2-safe (``cache.store.client_config``) and take credentials and
endpoint only from the standard AWS_* variables; only the retry count can
differ from the sync command's client.

Uploads go to the final key with ``upload_file`` and a multipart
``TransferConfig``: a single PUT or a multipart completion is atomic in S3, so
readers see the whole object or none, and s3transfer aborts a multipart upload
that failed, so no parts are left behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tts_inference.cache.store import (
    CacheError,
    S3Client,
    S3Uri,
    client_config,
    describe,
    error_code,
    http_status,
    is_fatal,
)
from tts_inference.sizes import MIB

__all__ = ["ObjectError", "ObjectStore", "S3Uri", "allowed_uri", "bucket_client"]


class ObjectError(Exception):
    """A bucket operation failed; ``fatal`` when retrying cannot help, ``missing`` on 404."""

    def __init__(self, message: str, *, fatal: bool = False, missing: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.missing = missing


def bucket_client(max_attempts: int = 8, max_pool: int = 16) -> S3Client:
    """A B2-safe client from the AWS_* variables, retrying each request ``max_attempts`` times."""
    config = client_config(max_pool).merge(
        Config(retries={"max_attempts": max_attempts, "mode": "standard"})
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        config=config,
    )


def parse_uri(uri: str, what: str) -> S3Uri:
    """An s3:// URI or a ValueError naming the field."""
    try:
        return S3Uri.parse(uri)
    except CacheError:
        raise ValueError(f"{what} must be an s3://bucket/key URI, got {uri!r}") from None


def allowed_uri(uri: str, what: str, allowed: Iterable[str]) -> S3Uri:
    """Parse ``uri`` and check its bucket is one this server may touch; ValueError otherwise."""
    parsed = parse_uri(uri, what)
    buckets = sorted(set(allowed))
    if not buckets:
        raise ValueError(
            f"{what}: this server has no allowed buckets (start it with --allowed-buckets)"
        )
    if parsed.bucket not in buckets:
        raise ValueError(
            f"{what}: bucket {parsed.bucket!r} is not allowed on this server; "
            f"allowed: {', '.join(buckets)}"
        )
    return parsed


def _error(exc: BaseException, uri: S3Uri) -> ObjectError:
    return ObjectError(
        describe(exc, uri),
        fatal=is_fatal(exc),
        missing=http_status(exc) == 404 or error_code(exc) in {"NoSuchKey", "NotFound"},
    )


@dataclass(frozen=True)
class Head:
    size: int
    etag: str
    metadata: Mapping[str, str]


class ObjectStore:
    """One lazily made, thread-safe S3 client and the few operations voices and jobs need."""

    def __init__(
        self,
        client_factory: Callable[[], S3Client] = bucket_client,
        *,
        part_bytes: int = 8 * MIB,
        on_upload: Callable[[str, int], None] | None = None,
    ) -> None:
        self._factory = client_factory
        self._client: S3Client | None = None
        self._lock = threading.Lock()
        self.part_bytes = max(part_bytes, 5 * MIB)
        self.on_upload = on_upload

    @property
    def client(self) -> S3Client:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def _uploaded(self, what: str, n: int) -> None:
        if self.on_upload is not None:
            self.on_upload(what, n)

    def get(self, uri: S3Uri, max_bytes: int) -> tuple[bytes, str]:
        """A whole small object and its ETag; ObjectError when missing, unreadable or too big."""
        try:
            response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _error(exc, uri) from None
        body = response["Body"]
        try:
            size = int(response.get("ContentLength") or 0)
            if size > max_bytes:
                raise ObjectError(f"{uri} is {size} bytes; the limit is {max_bytes}", fatal=True)
            data = body.read(max_bytes + 1)
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise ObjectError(f"reading {uri} failed: {exc}") from None
        finally:
            body.close()
        if len(data) > max_bytes:
            raise ObjectError(f"{uri} is over the limit of {max_bytes} bytes", fatal=True)
        return data, str(response.get("ETag", "")).strip('"')

    def get_bytes(self, uri: S3Uri, max_bytes: int) -> bytes:
        return self.get(uri, max_bytes)[0]

    def head(self, uri: S3Uri) -> Head | None:
        """Size, ETag and user metadata of an object; None when it does not exist."""
        try:
            response = self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            error = _error(exc, uri)
            if error.missing:
                return None
            raise error from None
        return Head(
            int(response.get("ContentLength") or 0),
            str(response.get("ETag", "")).strip('"'),
            dict(response.get("Metadata") or {}),
        )

    def put_bytes(
        self,
        uri: S3Uri,
        data: bytes,
        content_type: str,
        *,
        metadata: Mapping[str, str] | None = None,
        what: str = "record",
    ) -> str:
        """One PUT (atomic); returns the ETag."""
        try:
            response = self.client.put_object(
                Bucket=uri.bucket,
                Key=uri.key,
                Body=data,
                ContentType=content_type,
                Metadata=dict(metadata or {}),
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _error(exc, uri) from None
        self._uploaded(what, len(data))
        return str(response.get("ETag", "")).strip('"')

    def upload_file(
        self,
        path: str,
        uri: S3Uri,
        content_type: str,
        *,
        metadata: Mapping[str, str] | None = None,
        what: str = "job_output",
    ) -> int:
        """Upload a file to its final key, whole or not at all (multipart above part_bytes)."""
        size = os.path.getsize(path)
        config = TransferConfig(
            multipart_threshold=self.part_bytes,
            multipart_chunksize=self.part_bytes,
            max_concurrency=4,
            use_threads=True,
        )
        extra: dict[str, Any] = {"ContentType": content_type, "Metadata": dict(metadata or {})}
        try:
            self.client.upload_file(path, uri.bucket, uri.key, ExtraArgs=extra, Config=config)
        except boto3.exceptions.S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if cause is not None:
                raise _error(cause, uri) from None
            raise ObjectError(f"upload to {uri} failed: {exc}") from None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _error(exc, uri) from None
        self._uploaded(what, size)
        return size

    def delete(self, uri: S3Uri) -> None:
        try:
            self.client.delete_object(Bucket=uri.bucket, Key=uri.key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            error = _error(exc, uri)
            if not error.missing:
                raise error from None

    def list_keys(self, prefix: S3Uri) -> list[str]:
        """Every key under a prefix."""
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=prefix.bucket, Prefix=prefix.prefix
            )
            for page in pages:
                keys += [str(item["Key"]) for item in page.get("Contents", [])]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _error(exc, prefix) from None
        return keys

    def list_folders(self, prefix: S3Uri) -> list[str]:
        """The names of the 'folders' directly under a prefix."""
        names: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=prefix.bucket, Prefix=prefix.prefix, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    name = str(common.get("Prefix", ""))[len(prefix.prefix) :].strip("/")
                    if name:
                        names.append(name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _error(exc, prefix) from None
        return names

    def pending_uploads(self, uri: S3Uri) -> list[str]:
        """Upload ids of multipart uploads still open for one key (for checks and tests)."""
        try:
            response = self.client.list_multipart_uploads(Bucket=uri.bucket, Prefix=uri.key)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _error(exc, uri) from None
        return [str(u["UploadId"]) for u in response.get("Uploads", []) if u.get("Key") == uri.key]
