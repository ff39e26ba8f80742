"""The bucket: URIs, the B2-safe client, error classification and every object operation.

Nothing else in the package calls boto3: sync, publish, the installer, voices
and jobs all go through ``ObjectStore`` (or, for one small file, the
functions beside it), and every failure leaves as a ``StorageError`` whose
message names the object and what went wrong, never a secret.

Credentials and endpoint come from boto3's standard variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
Backblaze B2 rejects the CRC32 request checksums boto3 sends by default since
1.36, so clients send and check checksums only when an operation requires it.

Every call blocks (boto3); async layers call it through ``asyncio.to_thread``.
Uploads go to the final key with ``upload_file`` and a multipart
``TransferConfig``: a single PUT or a multipart completion is atomic in S3, so
readers see the whole object or none, and s3transfer aborts a multipart upload
that failed, so no parts are left behind.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import boto3
import boto3.exceptions
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tts_inference.sizes import MIB

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

__all__ = [
    "PERMANENT_EXIT",
    "TRANSIENT",
    "Head",
    "ObjectStore",
    "PermanentStorageError",
    "S3Client",
    "S3Uri",
    "StorageError",
    "allowed_uri",
    "describe",
    "make_client",
    "parse_uri",
]

_S3_URI = re.compile(r"^s3://(?P<bucket>[A-Za-z0-9][A-Za-z0-9._-]{1,253})(?:/(?P<key>.*))?$")

# Errors that retrying cannot fix: say so at once, naming bucket and key.
FATAL_CODES = {
    "403",
    "404",
    "AccessDenied",
    "Forbidden",
    "NoSuchKey",
    "NoSuchBucket",
    "NotFound",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
    "AllAccessDisabled",
    "InvalidRange",
}
MISSING_CODES = {"NoSuchKey", "NotFound"}

#: Failures of a connection or of a response body part way: worth another try.
TRANSIENT: tuple[type[BaseException], ...] = (
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)
_BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)

# The exit code of sync, install-flash-attn and run-job when no retry can help: the
# Jobs' podFailurePolicy fails the Job at once on it, rather than trying again.
PERMANENT_EXIT = 2


class StorageError(Exception):
    """A failure a person can act on; the CLIs print it and exit non-zero.

    ``permanent``: no retry can fix it (denied, missing, bad credentials, a bad
    manifest). ``missing``: the object is not there (404). ``code``: the bucket's
    error code, when the bucket answered.
    """

    permanent: bool = False

    def __init__(
        self,
        message: str,
        *,
        permanent: bool | None = None,
        missing: bool = False,
        code: str = "",
    ) -> None:
        super().__init__(message)
        if permanent is not None:
            self.permanent = permanent
        self.missing = missing
        self.code = code


class PermanentStorageError(StorageError):
    """A StorageError no retry can fix: the command exits with PERMANENT_EXIT."""

    permanent = True


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        match = _S3_URI.match(uri)
        if not match:
            raise PermanentStorageError(f"not an s3:// URI: {uri!r} (expected s3://bucket/key)")
        return cls(match["bucket"], match["key"] or "")

    def join(self, *parts: str) -> S3Uri:
        key = self.key
        for part in parts:
            key = f"{key.rstrip('/')}/{part.lstrip('/')}" if key else part.lstrip("/")
        return S3Uri(self.bucket, key)

    @property
    def prefix(self) -> str:
        """The key as a folder prefix, ending in '/' (or empty for the bucket root)."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_uri(uri: str, what: str) -> S3Uri:
    """An s3:// URI or a ValueError naming the field."""
    try:
        return S3Uri.parse(uri)
    except StorageError:
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


# --------------------------------------------------------------------------- the client


def _addressing_style() -> Literal["auto", "path", "virtual"]:
    style = os.environ.get("TTS_S3_ADDRESSING_STYLE", "auto")
    if style not in ("auto", "path", "virtual"):
        raise StorageError(f"TTS_S3_ADDRESSING_STYLE={style!r}: expected auto, path or virtual")
    return style  # type: ignore[return-value]


def client_config(max_pool: int = 32, max_attempts: int = 8) -> Config:
    return Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max_pool,
        s3={"addressing_style": _addressing_style()},
    )


def make_client(max_pool: int = 32, max_attempts: int = 8) -> S3Client:
    """A B2-safe S3 client from the standard AWS_* environment variables, retrying each
    request ``max_attempts`` times."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        config=client_config(max_pool, max_attempts),
    )


# --------------------------------------------------------------------------- errors


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(
            err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        )
        return code
    return type(exc).__name__


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    return None


def is_fatal(exc: BaseException) -> bool:
    """True for errors no retry can fix (denied, missing, bad credentials)."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        status = http_status(exc)
        return error_code(exc) in FATAL_CODES or status in {400, 401, 403, 404, 416}
    return False


def describe(exc: BaseException, uri: S3Uri | str) -> str:
    """A one-line message naming the object and what went wrong, never a secret."""
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return f"no credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    status = http_status(exc)
    code = error_code(exc)
    hint = {
        403: "access denied: check the key's permissions on this bucket and AWS_ENDPOINT_URL/AWS_REGION",
        404: "not found: check the bucket and key",
    }.get(status or 0, "")
    if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        hint = "the credentials were rejected: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    head = (
        f"{status} {code}" if status and code != str(status) else (str(status) if status else code)
    )
    return f"{head} on {uri}" + (f": {hint}" if hint else "")


def classify(exc: BaseException, uri: S3Uri | str) -> StorageError:
    """The StorageError a failed bucket call is reported as."""
    if isinstance(exc, StorageError):
        return exc
    code = error_code(exc) if isinstance(exc, botocore.exceptions.ClientError) else ""
    return StorageError(
        describe(exc, uri),
        permanent=is_fatal(exc),
        missing=http_status(exc) == 404 or code in MISSING_CODES,
        code=code,
    )


# --------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class Head:
    size: int
    etag: str
    metadata: Mapping[str, str]


class ObjectStore:
    """One lazily made, thread-safe S3 client and the operations on objects.

    ``part_bytes``: uploads above it are multipart, in parts of this size
    (at least 5 MiB); ``max_concurrency``: parts in flight per upload;
    ``on_upload(what, n)``: called with the bytes of each finished upload.
    """

    def __init__(
        self,
        client_factory: Callable[[], S3Client] = make_client,
        *,
        part_bytes: int = 8 * MIB,
        max_concurrency: int = 4,
        on_upload: Callable[[str, int], None] | None = None,
    ) -> None:
        self._factory = client_factory
        self._client: S3Client | None = None
        self._lock = threading.Lock()
        self.part_bytes = max(part_bytes, 5 * MIB)
        self.max_concurrency = max_concurrency
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
        """A whole small object and its ETag; StorageError when missing, unreadable or too big."""
        try:
            response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
        except _BOTO_ERRORS as exc:
            raise classify(exc, uri) from None
        body = response["Body"]
        try:
            size = int(response.get("ContentLength") or 0)
            if size > max_bytes:
                raise StorageError(
                    f"{uri} is {size} bytes; the limit is {max_bytes}", permanent=True
                )
            data = body.read(max_bytes + 1)
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise StorageError(f"reading {uri} failed: {exc}") from None
        finally:
            body.close()
        if len(data) > max_bytes:
            raise StorageError(f"{uri} is over the limit of {max_bytes} bytes", permanent=True)
        return data, str(response.get("ETag", "")).strip('"')

    def get_bytes(self, uri: S3Uri, max_bytes: int) -> bytes:
        return self.get(uri, max_bytes)[0]

    def open_range(self, uri: S3Uri, first: int, last: int) -> Any:
        """The body of bytes ``first..last`` (inclusive) of an object, to read and close."""
        try:
            response = self.client.get_object(
                Bucket=uri.bucket, Key=uri.key, Range=f"bytes={first}-{last}"
            )
        except _BOTO_ERRORS as exc:
            raise classify(exc, uri) from None
        return response["Body"]

    def exists(self, uri: S3Uri) -> bool:
        """Whether an object can be read: False when the key is missing; StorageError (with
        the bucket's ``code``, e.g. NoSuchBucket) when the bucket is missing or denied."""
        try:
            self.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].close()
        except _BOTO_ERRORS as exc:
            error = classify(exc, uri)
            if error.code == "NoSuchKey":
                return False
            raise error from None
        return True

    def head(self, uri: S3Uri) -> Head | None:
        """Size, ETag and user metadata of an object; None when it does not exist."""
        try:
            response = self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except _BOTO_ERRORS as exc:
            error = classify(exc, uri)
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
        except _BOTO_ERRORS as exc:
            raise classify(exc, uri) from None
        self._uploaded(what, len(data))
        return str(response.get("ETag", "")).strip('"')

    def upload_file(
        self,
        path: str,
        uri: S3Uri,
        content_type: str | None,
        *,
        metadata: Mapping[str, str] | None = None,
        what: str = "job_output",
    ) -> int:
        """Upload a file to its final key, whole or not at all (multipart above part_bytes)."""
        size = os.path.getsize(path)
        config = TransferConfig(
            multipart_threshold=self.part_bytes,
            multipart_chunksize=self.part_bytes,
            max_concurrency=self.max_concurrency,
            use_threads=True,
        )
        extra: dict[str, Any] = {"Metadata": dict(metadata or {})}
        if content_type is not None:
            extra["ContentType"] = content_type
        try:
            self.client.upload_file(path, uri.bucket, uri.key, ExtraArgs=extra, Config=config)
        except boto3.exceptions.S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if cause is not None:
                raise classify(cause, uri) from None
            raise StorageError(f"upload to {uri} failed: {exc}") from None
        except _BOTO_ERRORS as exc:
            raise classify(exc, uri) from None
        self._uploaded(what, size)
        return size

    def download_file(
        self, uri: S3Uri, dest: str, on_bytes: Callable[[int], None] | None = None
    ) -> int:
        """Fetch an object to ``dest`` through a temporary file beside it; returns its size.

        ``on_bytes`` is called with each count of bytes received (from several threads)."""
        tmp = f"{dest}.part.{os.getpid()}.{threading.get_ident()}"
        error: StorageError
        try:
            self.client.download_file(uri.bucket, uri.key, tmp, Callback=on_bytes)
        except _BOTO_ERRORS as exc:
            error = classify(exc, uri)
        except (boto3.exceptions.Boto3Error, OSError) as exc:
            error = StorageError(f"downloading {uri} failed: {exc}")
        else:
            os.replace(tmp, dest)
            return os.path.getsize(dest)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise error

    def delete(self, uri: S3Uri) -> None:
        try:
            self.client.delete_object(Bucket=uri.bucket, Key=uri.key)
        except _BOTO_ERRORS as exc:
            error = classify(exc, uri)
            if not error.missing:
                raise error from None

    def list_keys(self, prefix: S3Uri, limit: int | None = None) -> list[str]:
        """The keys under a prefix (all of them, or the first ``limit``)."""
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=prefix.bucket,
                Prefix=prefix.prefix,
                PaginationConfig={} if limit is None else {"MaxItems": limit},
            )
            for page in pages:
                keys += [str(item["Key"]) for item in page.get("Contents", [])]
        except _BOTO_ERRORS as exc:
            raise classify(exc, prefix) from None
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
        except _BOTO_ERRORS as exc:
            raise classify(exc, prefix) from None
        return names

    def pending_uploads(self, uri: S3Uri) -> list[str]:
        """Upload ids of multipart uploads still open for one key (for checks and tests)."""
        try:
            response = self.client.list_multipart_uploads(Bucket=uri.bucket, Prefix=uri.key)
        except _BOTO_ERRORS as exc:
            raise classify(exc, uri) from None
        return [str(u["UploadId"]) for u in response.get("Uploads", []) if u.get("Key") == uri.key]

    def abort_uploads(self, uri: S3Uri) -> None:
        """Abort the multipart uploads still open for one key (s3transfer aborts its own
        failed uploads; this clears what it could not)."""
        try:
            for upload_id in self.pending_uploads(uri):
                self.client.abort_multipart_upload(
                    Bucket=uri.bucket, Key=uri.key, UploadId=upload_id
                )
        except _BOTO_ERRORS as exc:
            raise classify(exc, uri) from None
