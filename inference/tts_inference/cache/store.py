"""The B2-safe S3 client and the errors every cache command reports.

Credentials and endpoint come from boto3's standard variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION).
Backblaze B2 rejects the CRC32 request checksums boto3 sends by default since
1.36, so clients send and check checksums only when an operation requires it.
Nothing here ever formats a credential into a message.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import boto3
import botocore.exceptions
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

__all__ = [
    "PERMANENT_EXIT",
    "CacheError",
    "PermanentCacheError",
    "S3Client",
    "S3Uri",
    "describe",
    "download_file",
    "is_fatal",
    "make_client",
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


# The exit code of sync, install-flash-attn and run-job when no retry can help: the
# Jobs' podFailurePolicy fails the Job at once on it, rather than trying again.
PERMANENT_EXIT = 2


class CacheError(Exception):
    """A failure a person can act on; the CLI prints it and exits non-zero."""

    #: True when no retry can fix it (denied, missing, bad credentials, a bad manifest).
    permanent: bool = False


class PermanentCacheError(CacheError):
    """A CacheError no retry can fix: the command exits with PERMANENT_EXIT."""

    permanent = True


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        match = _S3_URI.match(uri)
        if not match:
            raise PermanentCacheError(f"not an s3:// URI: {uri!r} (expected s3://bucket/key)")
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


def _addressing_style() -> Literal["auto", "path", "virtual"]:
    style = os.environ.get("TTS_S3_ADDRESSING_STYLE", "auto")
    if style not in ("auto", "path", "virtual"):
        raise CacheError(f"TTS_S3_ADDRESSING_STYLE={style!r}: expected auto, path or virtual")
    return style  # type: ignore[return-value]


def client_config(max_pool: int = 32) -> Config:
    return Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 8, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max_pool,
        s3={"addressing_style": _addressing_style()},
    )


def make_client(max_pool: int = 32) -> S3Client:
    """A B2-safe S3 client from the standard AWS_* environment variables."""
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        config=client_config(max_pool),
    )


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


def download_file(client: S3Client, uri: S3Uri, dest: str) -> int:
    """Fetch one small object to ``dest`` (via a temporary file); returns its size."""
    tmp = f"{dest}.part.{os.getpid()}"
    try:
        client.download_file(uri.bucket, uri.key, tmp)
    except botocore.exceptions.ClientError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        error = PermanentCacheError if is_fatal(exc) else CacheError
        raise error(describe(exc, uri)) from None
    os.replace(tmp, dest)
    return os.path.getsize(dest)
