"""The endpoint server's job API (/v1/jobs) as the operator calls it.

Which answers are worth another try (a full queue, a draining pod, no answer
at all) and which refuse the job; the endpoint's API key, read from its Secret.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from tts_operator.builders.meta import Obj
from tts_operator.kube import Kube

# Answers that say "not now" rather than "no": a timeout, a full queue (429), and any
# 5xx (a pod draining during a rollout, a proxy that lost its upstream). The same
# attempt is sent again later.
TRANSIENT_STATUSES = frozenset({408, 429})


class ServerError(Exception):
    """The endpoint's job API answered something other than what we asked for."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        # Seconds the server asked us to wait (its Retry-After header), if it said.
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.status is not None and (self.status in TRANSIENT_STATUSES or self.status >= 500)


# What a later pass may get past: a transient answer, or no answer (connection refused or
# reset, a timeout) while the endpoint's pods are replaced.
TRANSIENT_ERRORS = (aiohttp.ClientError, TimeoutError)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS) or (isinstance(exc, ServerError) and exc.transient)


@dataclass(frozen=True)
class ServerJob:
    id: str
    state: str
    output_uri: str | None = None
    audio_seconds: float | None = None
    rtf: float | None = None
    error: str | None = None
    progress: float | None = None
    # A job stopped by DELETE /v1/jobs/{id}: failed, and not to be run again.
    cancelled: bool = False
    # A job interrupted (its server stopped): the same key runs it again.
    retryable: bool = False

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> ServerJob:
        return cls(
            id=str(doc["id"]),
            state=str(doc["state"]),
            output_uri=doc.get("outputUri"),
            audio_seconds=doc.get("audioSeconds"),
            rtf=doc.get("rtf"),
            error=doc.get("error"),
            progress=doc.get("progress"),
            cancelled=bool(doc.get("cancelled")),
            retryable=bool(doc.get("retryable")),
        )


class JobApi:
    """The endpoint server's /v1/jobs, over HTTP."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    @staticmethod
    def _headers(api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def submit(
        self, base: str, body: dict[str, Any], key: str, api_key: str | None = None
    ) -> ServerJob:
        headers = {**self._headers(api_key), "Idempotency-Key": key}
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as session,
            session.post(f"{base}/v1/jobs", json=body, headers=headers) as resp,
        ):
            doc = await _json(resp)
            if resp.status >= 400:
                raise _server_error(doc, resp)
            return ServerJob.parse(doc)

    async def get(self, base: str, job_id: str, api_key: str | None = None) -> ServerJob | None:
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as session,
            session.get(f"{base}/v1/jobs/{job_id}", headers=self._headers(api_key)) as resp,
        ):
            if resp.status == 404:
                return None
            doc = await _json(resp)
            if resp.status >= 400:
                raise _server_error(doc, resp)
            return ServerJob.parse(doc)

    async def cancel(self, base: str, job_id: str, api_key: str | None = None) -> None:
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as session,
            session.delete(f"{base}/v1/jobs/{job_id}", headers=self._headers(api_key)) as resp,
        ):
            if resp.status not in (200, 202, 204, 404, 409):
                raise ServerError(f"cancel answered {resp.status}", resp.status)


async def _json(resp: aiohttp.ClientResponse) -> Any:
    """The body as JSON, or its text when it is not JSON (a proxy's error page)."""
    text = await resp.text()
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()[:200]


async def api_key(kube: Kube, endpoint: Obj) -> str | None:
    """The endpoint's API key from its spec.apiKeySecret (read by name), or None without one.

    Raises LookupError naming the Secret and key when either is missing.
    """
    ref = endpoint["spec"].get("apiKeySecret")
    if not ref:
        return None
    ns = endpoint["metadata"]["namespace"]
    key = ref.get("key", "api-key")
    secret = await kube.get("Secret", ns, ref["name"])
    if secret is None:
        raise LookupError(
            f"Secret {ns}/{ref['name']} (spec.apiKeySecret of the endpoint) not found"
        )
    value = (secret.get("data") or {}).get(key)
    if value is None:
        raise LookupError(f"Secret {ns}/{ref['name']} has no key {key!r} (spec.apiKeySecret.key)")
    return base64.b64decode(value).decode().strip()


def _server_error(doc: Any, resp: aiohttp.ClientResponse) -> ServerError:
    raw = resp.headers.get("Retry-After", "")
    try:
        retry_after: float | None = max(float(raw), 0.0)
    except ValueError:
        retry_after = None  # an HTTP date, or nothing: the operator's own backoff applies
    return ServerError(_error_message(doc, resp.status), resp.status, retry_after)


def _error_message(doc: Any, status: int) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return f"{status}: {doc['error'].get('message')}"
    return f"{status}: {doc}"
