"""A TTSJob on an endpoint: what counts as an attempt, and the endpoint's API key."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from tts_operator.endpoint_api import ServerError, ServerJob
from tts_operator.handlers import job as job_flow

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ENDPOINT: dict[str, Any] = {
    "metadata": {"name": "tiny", "namespace": "ns"},
    "spec": {"apiKeySecret": {"name": "tts-key"}},
    "status": {
        "url": "http://tiny.ns.svc:8000",
        "conditions": [{"type": "Available", "status": "True"}],
    },
}
TTSJOB: dict[str, Any] = {
    "metadata": {"name": "hello", "namespace": "ns", "uid": "u-1", "generation": 1},
    "spec": {"endpointRef": {"name": "tiny"}, "text": "Hi.", "output": {"uri": "s3://b/o.wav"}},
}


class FakeKube:
    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, name))


class FakeApi:
    """Answers each submit with the next outcome: an exception to raise or a job to return."""

    def __init__(
        self, *outcomes: BaseException | ServerJob, remote: ServerJob | None = None
    ) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str | None]] = []
        self.cancelled: list[str] = []
        self.remote = remote

    async def cancel(self, base: str, job_id: str, api_key: str | None = None) -> None:
        self.cancelled.append(job_id)

    async def get(self, base: str, job_id: str, api_key: str | None = None) -> ServerJob | None:
        return self.remote

    async def submit(
        self, base: str, body: dict[str, Any], key: str, api_key: str | None = None
    ) -> ServerJob:
        self.calls.append((key, api_key))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def kube(with_secret: bool = True) -> FakeKube:
    objects: dict[tuple[str, str], dict[str, Any]] = {("TTSEndpoint", "tiny"): ENDPOINT}
    if with_secret:
        data = {"api-key": base64.b64encode(b"s3cret\n").decode()}
        objects[("Secret", "tts-key")] = {"data": data}
    return FakeKube(objects)


def reconcile(
    api: FakeApi,
    k: FakeKube,
    status: dict[str, Any] | None = None,
    now: datetime = NOW,
    **spec: Any,
) -> dict[str, Any]:
    job = {
        "metadata": {**TTSJOB["metadata"], "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {**TTSJOB["spec"], **spec},
        "status": status or {},
    }
    result = asyncio.run(job_flow.reconcile(k, api, job, None, now))  # type: ignore[arg-type]
    assert result is not None
    return result


@pytest.mark.parametrize(
    "error",
    [
        ServerError("429: the queue is full", 429),
        ServerError("503: draining", 503),
        ServerError("500: internal error", 500),
        aiohttp.ClientConnectionError("Cannot connect to host tiny.ns.svc:8000"),
        TimeoutError(),
    ],
    ids=["429", "503", "500", "connection-refused", "timeout"],
)
def test_a_busy_or_unreachable_endpoint_is_tried_again_with_the_same_attempt(
    error: BaseException,
) -> None:
    api = FakeApi(error, ServerJob(id="j-1", state="queued"))
    k = kube()
    first = reconcile(api, k)
    assert first["phase"] == "Pending"
    assert "did not take the job yet" in first["message"]
    assert int(first.get("attempts") or 0) == 0
    assert first["transientErrors"] == 1
    # Before the pause is over nothing is sent; after it, the same attempt goes again.
    assert reconcile(api, k, dict(first), NOW + timedelta(seconds=1)) == first
    assert len(api.calls) == 1
    second = reconcile(api, k, first, NOW + timedelta(seconds=2))
    assert second["phase"] == "Running"
    assert second["attempts"] == 1
    assert api.calls[0][0] == api.calls[1][0], "the same idempotency key both times"


def test_a_refused_job_fails_at_once() -> None:
    api = FakeApi(ServerError("400: unknown voice 'nobody'", 400))
    status = reconcile(api, kube())
    assert status["phase"] == "Failed"
    assert "unknown voice 'nobody'" in status["message"]


def test_the_endpoints_api_key_is_sent() -> None:
    api = FakeApi(ServerJob(id="j-1", state="queued"))
    reconcile(api, kube())
    assert api.calls[0][1] == "s3cret"


def test_a_missing_key_secret_waits_and_names_it() -> None:
    api = FakeApi()
    status = reconcile(api, kube(with_secret=False))
    assert status["phase"] == "Pending"
    assert "Secret ns/tts-key" in status["message"]
    assert not api.calls


def running(attempts: int = 1) -> dict[str, Any]:
    return {"phase": "Running", "serverJobId": "j-1", "attempts": attempts}


def test_a_job_cancelled_on_the_endpoint_fails_without_a_retry() -> None:
    remote = ServerJob(id="j-1", state="failed", error="cancelled: DELETE", cancelled=True)
    status = reconcile(FakeApi(remote=remote), kube(), running())
    assert status["phase"] == "Failed"
    assert "cancelled on TTSEndpoint tiny" in status["message"]


def test_an_interrupted_job_is_resubmitted_as_the_same_attempt() -> None:
    remote = ServerJob(id="j-1", state="failed", error="interrupted", retryable=True)
    api = FakeApi(ServerJob(id="j-1", state="running"), remote=remote)
    status = reconcile(api, kube(), running())
    assert status["phase"] == "Running"
    assert status["serverJobId"] is None
    again = reconcile(api, kube(), status)
    assert again["attempts"] == 1
    assert api.calls[0][0] == "u-1", "the first attempt's key"


def test_a_failed_job_is_retried_with_a_new_attempt_until_the_limit() -> None:
    remote = ServerJob(id="j-1", state="failed", error="RuntimeError: boom")
    status = reconcile(FakeApi(remote=remote), kube(), running())
    assert "retrying" in status["message"]
    assert status["serverJobId"] is None
    final = reconcile(FakeApi(remote=remote), kube(), running(attempts=3))
    assert final["phase"] == "Failed"
    assert "failed after 3 attempt(s)" in final["message"]


def test_the_pause_is_the_servers_retry_after_or_a_doubling_backoff() -> None:
    k = kube()
    busy = ServerError("429: queue full", 429, retry_after=30)
    status = reconcile(FakeApi(busy), k)
    assert status["retryAt"] == "2026-01-01T00:00:30Z"
    assert "in 30s" in status["message"]
    waits = []
    status = {}
    for _ in range(10):
        status = reconcile(
            FakeApi(ServerError("502: bad gateway", 502)), k, {**status, "retryAt": None}
        )
        waits.append(status["message"].split("trying again in ")[1].split("s")[0])
    assert waits == ["2", "4", "8", "16", "32", "64", "128", "256", "300", "300"]
    assert status["transientErrors"] == 10


def test_an_endpoint_that_stays_busy_past_the_deadline_fails_the_job_as_deadline_exceeded() -> None:
    k = kube()
    busy = ServerError("429: 1 jobs are queued or running", 429, retry_after=5)
    status = reconcile(FakeApi(busy), k, activeDeadlineSeconds=60)
    assert status["phase"] == "Pending"
    # Still busy at 55 s: one more "not now"; at 60 s the deadline ends it without a call.
    status = reconcile(
        FakeApi(busy), k, status, NOW + timedelta(seconds=55), activeDeadlineSeconds=60
    )
    assert status["transientErrors"] == 2
    api = FakeApi(busy)
    final = reconcile(api, k, status, NOW + timedelta(seconds=60), activeDeadlineSeconds=60)
    assert not api.calls
    assert final["phase"] == "Failed"
    assert "not finished 60s after it was created" in final["message"]
    failed = next(cd for cd in final["conditions"] if cd["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")


def test_a_job_running_past_the_deadline_is_cancelled_on_the_endpoint() -> None:
    api = FakeApi(remote=ServerJob(id="j-1", state="running"))
    before = reconcile(
        api, kube(), running(), NOW + timedelta(seconds=59), activeDeadlineSeconds=60
    )
    assert before["phase"] == "Running"
    after = reconcile(api, kube(), running(), NOW + timedelta(seconds=60), activeDeadlineSeconds=60)
    assert after["phase"] == "Failed"
    assert api.cancelled == ["j-1"]


def test_a_job_that_succeeded_just_before_the_deadline_is_not_failed_for_it() -> None:
    done = ServerJob(id="j-1", state="succeeded", output_uri="s3://b/o.wav", audio_seconds=1.5)
    api = FakeApi(remote=done)
    status = reconcile(
        api, kube(), running(), NOW + timedelta(seconds=61), activeDeadlineSeconds=60
    )
    assert status["phase"] == "Succeeded"
    assert not api.cancelled
