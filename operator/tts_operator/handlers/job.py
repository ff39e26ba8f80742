"""TTSJob: on a warm endpoint through its job API, or as a batch Job; status mirrored.

On an endpoint the job is submitted with the TTSJob's uid as the idempotency
key (attempt N > 1 adds "-N"), so a restarted operator, or a status write
that was lost, can never run the same attempt twice: the server returns the
job it already has.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from tts_operator import constants as c
from tts_operator import status as st
from tts_operator.builders import objects as b
from tts_operator.builders.meta import Obj
from tts_operator.endpoint_api import (
    TRANSIENT_ERRORS,
    JobApi,
    ServerError,
    api_key,
    is_transient,
)
from tts_operator.handlers.endpoint import JobState, job_state, json_line, last_line, own_pods
from tts_operator.kube import Kube

log = logging.getLogger("tts_operator.job")

SUBMITTED = "Submitted"
COMPLETE = "Complete"
FAILED = "Failed"


def _what(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# The operator's own pause between tries when the endpoint gives none: doubling from
# 2 s up to 5 minutes, so a rollout of a few minutes costs a handful of requests.
BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 300.0


def _not_now(status: Obj, exc: BaseException, now: datetime, what: str) -> Obj:
    """Pure: the status after a transient answer: counted, and the next try scheduled."""
    tries = int(status.get("transientErrors") or 0) + 1
    wait = getattr(exc, "retry_after", None)
    if wait is None:
        wait = min(BACKOFF_FIRST_S * 2 ** (tries - 1), BACKOFF_MAX_S)
    status["transientErrors"] = tries
    status["retryAt"] = st.now_rfc3339(now + timedelta(seconds=wait))
    status["message"] = f"{what} ({_what(exc)}); trying again in {wait:.0f}s (try {tries})"
    return status


def server_body(job: Obj) -> dict[str, Any]:
    """Pure: the POST /v1/jobs body for a TTSJob."""
    spec = job["spec"]
    body: dict[str, Any] = {
        "output": {"uri": spec["output"]["uri"], "format": spec["output"].get("format", "wav")}
    }
    if spec.get("textFrom"):
        body["textUri"] = spec["textFrom"]
    else:
        body["text"] = spec["text"]
    voice = spec.get("voice", {})
    if voice.get("refAudio"):
        body["voice"] = {
            "refAudio": voice["refAudio"],
            **({"refText": voice["refText"]} if voice.get("refText") else {}),
        }
    else:
        body["voice"] = voice.get("name", "default")
    params = spec.get("params", {})
    # The job API speaks the CRD's camelCase names.
    body["params"] = {
        k: v for k, v in params.items() if k in ("speed", "nfeStep", "cfgStrength", "seed")
    }
    return body


def idempotency_key(job: Obj, attempt: int) -> str:
    uid = str(job["metadata"]["uid"])
    return uid if attempt <= 1 else f"{uid}-{attempt}"


def _finish(
    status: Obj, job: Obj, now: datetime, *, ok: bool, message: str, reason: str | None = None
) -> Obj:
    gen = job["metadata"].get("generation")
    status["phase"] = c.PHASE_SUCCEEDED if ok else c.PHASE_FAILED
    status["message"] = message
    status["completedAt"] = st.now_rfc3339(now)
    why = reason or ("Succeeded" if ok else "Failed")
    conds = status.get("conditions", [])
    conds = st.set_condition(conds, COMPLETE, ok, why, message, gen, now)
    status["conditions"] = st.set_condition(conds, FAILED, not ok, why, message, gen, now)
    return status


def past_deadline(job: Obj, now: datetime) -> str | None:
    """Pure: why a TTSJob on an endpoint is out of time, or None.

    spec.activeDeadlineSeconds counts from the TTSJob's creation: waiting for the
    endpoint, its "not now" answers and the run itself all spend it.
    """
    limit = job["spec"].get("activeDeadlineSeconds")
    created = job["metadata"].get("creationTimestamp")
    if limit is None or not created:
        return None
    start = st.parse_rfc3339(str(created), now)
    if now < start + timedelta(seconds=int(limit)):
        return None
    return f"DeadlineExceeded: not finished {int(limit)}s after it was created (spec.activeDeadlineSeconds)"


def expired(job: Obj, now: datetime) -> bool:
    """Pure: a finished TTSJob whose ttlSecondsAfterFinished has passed."""
    ttl = job["spec"].get("ttlSecondsAfterFinished")
    done = (job.get("status") or {}).get("completedAt")
    if ttl is None or not done:
        return False
    finished = st.parse_rfc3339(done, now)
    return now >= finished + timedelta(seconds=int(ttl))


async def reconcile(
    kube: Kube, api: JobApi, job: Obj, config: b.BuildConfig, now: datetime
) -> Obj | None:
    """One pass; returns the status to write, or None when there is nothing to change."""
    old: Obj = dict(job.get("status") or {})
    if old.get("phase") in (c.PHASE_SUCCEEDED, c.PHASE_FAILED):
        return None
    status = dict(old)
    status["observedGeneration"] = job["metadata"].get("generation")
    gen = job["metadata"].get("generation")
    if job["spec"].get("endpointRef"):
        why = past_deadline(job, now)
        if why is None:
            return await _on_endpoint(kube, api, job, status, gen, now)
        if status.get("serverJobId"):
            # A job that ended on the endpoint just before the deadline ends as it did (with a
            # job on the endpoint this pass only reads its state: it never submits).
            ended = await _on_endpoint(kube, api, job, dict(status), gen, now)
            if ended.get("phase") in (c.PHASE_SUCCEEDED, c.PHASE_FAILED):
                return ended
            await cancel(api, kube, job)
        return _finish(status, job, now, ok=False, message=why, reason=c.REASON_DEADLINE_EXCEEDED)
    return await _as_batch(kube, job, status, config, gen, now)


async def _on_endpoint(
    kube: Kube, api: JobApi, job: Obj, status: Obj, gen: int | None, now: datetime
) -> Obj:
    ns = job["metadata"]["namespace"]
    name = job["spec"]["endpointRef"]["name"]
    endpoint = await kube.get("TTSEndpoint", ns, name)
    conds = (endpoint or {}).get("status", {}).get("conditions", [])
    url = (endpoint or {}).get("status", {}).get("url")
    if endpoint is None or not st.is_true(conds, c.AVAILABLE) or not url:
        why = (
            "not found"
            if endpoint is None
            else (st.get_condition(conds, c.AVAILABLE) or {}).get("message", "not ready")
        )
        status["phase"] = c.PHASE_PENDING
        status["message"] = f"waiting for TTSEndpoint {name}: {why}"
        status["conditions"] = st.set_condition(
            status.get("conditions"),
            SUBMITTED,
            False,
            "EndpointNotReady",
            status["message"],
            gen,
            now,
        )
        return status
    retry_at = status.get("retryAt")
    if retry_at and st.now_rfc3339(now) < str(retry_at):
        return status  # the endpoint asked for a pause; the next pass after it tries again
    status["retryAt"] = None
    try:
        key = await api_key(kube, endpoint)
    except LookupError as exc:
        status["phase"] = c.PHASE_PENDING
        status["message"] = f"waiting for TTSEndpoint {name}'s API key: {exc}"
        return status
    attempts = int(status.get("attempts", 0))
    server_id = status.get("serverJobId")
    if not server_id:
        attempts += 1
        try:
            submitted = await api.submit(
                url, server_body(job), idempotency_key(job, attempts), api_key=key
            )
        except (ServerError, *TRANSIENT_ERRORS) as exc:
            if is_transient(exc):
                # Not a new attempt: the same attempt (and key) is sent again, after the
                # wait the server asked for, or the operator's growing backoff.
                status.setdefault("phase", c.PHASE_PENDING)
                return _not_now(status, exc, now, f"TTSEndpoint {name} did not take the job yet")
            # The server refused the job itself: nothing to retry.
            status["attempts"] = attempts
            return _finish(
                status, job, now, ok=False, message=f"the endpoint refused the job: {exc}"
            )
        status.update(
            serverJobId=submitted.id,
            attempts=attempts,
            phase=c.PHASE_RUNNING,
            message=f"submitted to {name} as {submitted.id}",
        )
        status.setdefault("startedAt", st.now_rfc3339(now))
        status["conditions"] = st.set_condition(
            status.get("conditions"), SUBMITTED, True, "Submitted", status["message"], gen, now
        )
        return status
    try:
        remote = await api.get(url, str(server_id), api_key=key)
    except (ServerError, *TRANSIENT_ERRORS) as exc:
        if not is_transient(exc):
            raise
        return _not_now(status, exc, now, f"cannot reach TTSEndpoint {name}")
    if (
        remote is None
    ):  # the server lost it (e.g. replaced before it persisted): the same key resubmits
        status["serverJobId"] = None
        status["attempts"] = max(attempts - 1, 0)
        status["message"] = f"job {server_id} not found on {name}; resubmitting"
        return status
    if remote.state == "succeeded":
        status.update(
            outputUri=remote.output_uri, audioSeconds=remote.audio_seconds, rtf=remote.rtf
        )
        return _finish(status, job, now, ok=True, message=f"audio written to {remote.output_uri}")
    if remote.state == "failed" and remote.cancelled:
        return _finish(
            status, job, now, ok=False, message=f"cancelled on TTSEndpoint {name}: {remote.error}"
        )
    if remote.state == "failed" and remote.retryable:
        # Interrupted (its server pod stopped): the same attempt and key run it again.
        status["serverJobId"] = None
        status["attempts"] = max(attempts - 1, 0)
        status["message"] = f"job {server_id} was interrupted on {name}; resubmitting"
        return status
    if remote.state == "failed":
        limit = int(job["spec"].get("backoffLimit", 2))
        if attempts <= limit:
            status["serverJobId"] = None
            status["message"] = (
                f"attempt {attempts} failed: {remote.error}; retrying ({attempts}/{limit + 1})"
            )
            return status
        return _finish(
            status,
            job,
            now,
            ok=False,
            message=f"failed after {attempts} attempt(s): {remote.error}",
        )
    status["phase"] = c.PHASE_RUNNING
    progress = f" ({remote.progress:.0%})" if isinstance(remote.progress, int | float) else ""
    status["message"] = f"{remote.state} on {name}{progress}"
    return status


async def _as_batch(
    kube: Kube, job: Obj, status: Obj, config: b.BuildConfig, gen: int | None, now: datetime
) -> Obj:
    ns = job["metadata"]["namespace"]
    claim = job["spec"]["storage"].get("cache", {}).get("existingClaim")
    modes = None
    own = b.batch_cache_pvc(job)
    if (
        own is not None
        and await kube.get("PersistentVolumeClaim", ns, own["metadata"]["name"]) is None
    ):
        await kube.create(own)
    if claim and b.batch_parts(job) > 1:
        pvc = await kube.get("PersistentVolumeClaim", ns, claim)
        modes = list((pvc or {}).get("spec", {}).get("accessModes") or [])
    want = b.batch_job(job, config, modes)
    name = want["metadata"]["name"]
    current = await kube.get("Job", ns, name) or await kube.create(want)
    pods = await kube.list("Pod", ns, f"batch.kubernetes.io/job-name={name}")
    outcome = batch_outcome(current, pods)
    status.setdefault("startedAt", st.now_rfc3339(now))
    status["attempts"] = int(current.get("status", {}).get("failed", 0)) + (
        1 if outcome.state != "failed" else 0
    )
    if outcome.state == "running":
        status["phase"] = c.PHASE_RUNNING
        status["message"] = outcome.message
        return status
    if outcome.state == "failed":
        return _finish(status, job, now, ok=False, message=outcome.message, reason=outcome.reason)
    summary = outcome.summary or {}
    status.update(
        outputUri=summary.get("outputUri"),
        audioSeconds=summary.get("audioSeconds"),
        rtf=summary.get("rtf"),
    )
    return _finish(status, job, now, ok=True, message=outcome.message)


def batch_outcome(job: Obj, pods: list[Obj]) -> JobState:
    """Pure: a batch TTSJob's state from its Job and the Job's pods.

    Succeeded once a pod reports the joined output (any index: the joining pod exits 0
    only after the whole file is uploaded); Failed with the failing pod's own message
    when the Job failed (a permanent input error, exit code 2, before any other pod's);
    while it runs, how many of its parts are done.
    """
    name = job["metadata"]["name"]
    pods = own_pods(job, pods)
    state = job_state(job, pods) or JobState("running")
    summary = _run_job_summary(pods)
    if state.state == "failed":
        if state.reason:
            return state
        return JobState("failed", _permanent_failure(pods) or state.message)
    if summary:
        return JobState("succeeded", f"audio written to {summary['outputUri']}", summary)
    if state.state == "succeeded":
        return JobState(
            "failed",
            f"batch Job {name} completed but no pod reported the joined output "
            "(a run-job termination message with joined true and an outputUri)",
        )
    parts = int(job.get("spec", {}).get("completions") or 1)
    message = f"batch Job {name} running"
    if parts > 1:
        done = min(int(job.get("status", {}).get("succeeded") or 0), parts)
        message += f": {done}/{parts} parts done"
    if state.failed_container:
        message += f"; retrying after {state.failed_container} failed: {state.message}"
    return JobState("running", message)


def _run_job_terminations(pods: list[Obj]) -> list[tuple[int, dict[str, Any] | None, Obj]]:
    """(exit code, JSON summary, terminated state) of every run-job container that ended."""
    out = []
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []):
            term = cs.get("state", {}).get("terminated")
            if cs.get("name") == "run-job" and term:
                out.append(
                    (int(term.get("exitCode", 0)), json_line(term.get("message") or ""), term)
                )
    return out


def _run_job_summary(pods: list[Obj]) -> dict[str, Any] | None:
    """The joining pod's summary: outputUri, audioSeconds, rtf (parts report joined false)."""
    for code, parsed, _ in _run_job_terminations(pods):
        if code == 0 and parsed and parsed.get("joined") is not False and parsed.get("outputUri"):
            return parsed
    return None


def _permanent_failure(pods: list[Obj]) -> str | None:
    """What a run-job that gave up on its input (exit code 2) said, if one did."""
    for code, parsed, term in _run_job_terminations(pods):
        if code == b.PERMANENT_EXIT:
            text = (term.get("message") or "").strip()
            return str(
                (parsed or {}).get("message")
                or (parsed or {}).get("error")
                or last_line(text)
                or term.get("reason")
                or "run-job rejected its input (exit code 2)"
            )
    return None


async def cancel(api: JobApi, kube: Kube, job: Obj) -> None:
    """Deleting a running TTSJob cancels its work on the endpoint."""
    status = job.get("status") or {}
    if status.get("phase") in (c.PHASE_SUCCEEDED, c.PHASE_FAILED) or not status.get("serverJobId"):
        return
    ref = job["spec"].get("endpointRef")
    if not ref:
        return
    endpoint = await kube.get("TTSEndpoint", job["metadata"]["namespace"], ref["name"])
    url = (endpoint or {}).get("status", {}).get("url")
    if endpoint is not None and url:
        try:
            key = await api_key(kube, endpoint)
            await api.cancel(url, str(status["serverJobId"]), api_key=key)
        except (LookupError, ServerError, *TRANSIENT_ERRORS) as exc:
            log.warning("could not cancel %s on %s: %s", status["serverJobId"], ref["name"], exc)
