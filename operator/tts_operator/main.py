"""Entry point of `tts-operator` and the Kopf handlers: each one fetches, calls the
reconcile functions (which call the pure builders), applies and writes status."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from tts_operator import config, constants
from tts_operator.builders.meta import Obj
from tts_operator.builders.objects import BuildConfig
from tts_operator.endpoint_api import JobApi
from tts_operator.handlers import endpoint as endpoint_flow
from tts_operator.handlers import job as job_flow
from tts_operator.kube import Kube, retry_delay
from tts_operator.metrics import METRICS

log = logging.getLogger("tts_operator")

# Timers are declared at import, so their interval comes from the environment.
RECONCILE_INTERVAL = float(os.environ.get("TTS_OPERATOR_RECONCILE_INTERVAL") or 10)


def _settings(memo: kopf.Memo) -> config.Settings:
    settings = memo.get("settings")
    return settings if isinstance(settings, config.Settings) else config.Settings()


def _build_config(memo: kopf.Memo) -> BuildConfig:
    s = _settings(memo)
    return BuildConfig(
        image=s.inference_image,
        image_pull_policy=s.image_pull_policy,
        prometheus_url=s.prometheus_url,
        voice_aliases=s.voice_aliases,
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Name Kopf's finalizer and progress records under the project's group."""
    settings.persistence.finalizer = constants.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=constants.ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # Watching named namespaces needs no cluster-wide list of namespaces or CRDs, and the
    # chart's namespaced RBAC (a Role per namespace) grants none: scanning would spend
    # a minute of forbidden retries before Kopf falls back to the names it was given.
    settings.scanning.disabled = not _settings(memo).all_namespaces
    memo.setdefault("kube", Kube())
    memo.setdefault("jobs", JobApi())


def _record(kind: str, ref: str, phase: str | None, uid: str | None = None) -> None:
    """Count ``ref`` ("namespace/name") in tts_operator_resources under its current phase."""
    namespace, _, name = ref.partition("/")
    METRICS.phases.set(kind, namespace, name, phase, uid)


def _forget(kind: str, body: kopf.Body) -> None:
    """A deleted resource no longer counts in tts_operator_resources (nor, a TTSJob, in
    the pending jobs KEDA wakes on), even if a pass that read it before ends after."""
    namespace, name, uid = str(body.meta.namespace), str(body.meta.name), body.meta.uid
    METRICS.phases.forget(kind, namespace, name, uid)
    if kind == constants.JOB_KIND:
        METRICS.pending_jobs.forget(namespace, name, uid)


def _record_body(kind: str, body: kopf.Body, phase: str | None) -> None:
    # A resource being deleted is on its way out of the gauges: a reconcile that
    # raced with the deletion must not count it again (nor one that read it before
    # the deletion and ends after: the uid is remembered as gone).
    if body.meta.get("deletionTimestamp"):
        _forget(kind, body)
        return
    uid = body.meta.uid
    _record(kind, f"{body.meta.namespace}/{body.meta.name}", phase, uid)
    if kind == constants.JOB_KIND:
        ref = (body.get("spec") or {}).get("endpointRef") or {}
        finished = phase in (constants.PHASE_SUCCEEDED, constants.PHASE_FAILED)
        waiting = None if finished else ref.get("name")
        METRICS.pending_jobs.set(str(body.meta.namespace), str(body.meta.name), waiting, uid)


async def _reconcile(
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    run: Callable[[], Awaitable[Obj | None]],
    event_message: Callable[[Obj], str],
) -> None:
    """One pass of either kind: time and count it, write what changed in status, post an
    Event when the phase changes, and keep the resource gauges current."""
    started = time.monotonic()
    try:
        status = await run()
    except Exception as exc:
        METRICS.reconciles.labels(kind, "error").inc()
        if isinstance(exc, kopf.TemporaryError | kopf.PermanentError):
            raise
        delay = retry_delay(exc)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if delay is None and isinstance(exc, ApiException):
            # The API server refused an object this pass built: not until the spec changes.
            raise kopf.PermanentError(message) from exc
        if delay is not None:
            raise kopf.TemporaryError(message, delay=delay) from exc
        raise  # a fault of the operator's own: Kopf logs it whole and retries with backoff
    finally:
        METRICS.reconcile_seconds.labels(kind).observe(time.monotonic() - started)
    METRICS.reconciles.labels(kind, "ok").inc()
    old = body.get("status") or {}
    if status is None:  # nothing to change (a finished TTSJob)
        _record_body(kind, body, old.get("phase"))
        return
    if old.get("phase") != status.get("phase"):
        event_type = "Warning" if status.get("phase") == constants.PHASE_FAILED else "Normal"
        kopf.event(
            body, type=event_type, reason=str(status.get("phase")), message=event_message(status)
        )
    _record_body(kind, body, status.get("phase"))
    for key, value in status.items():
        if old.get(key) != value:
            patch.status[key] = value


def _endpoint_event(status: Obj) -> str:
    """The first condition that is not true, in the order a user fixes them."""
    conds = {cond["type"]: cond for cond in status["conditions"]}
    order = (constants.CACHE_READY, constants.FLASH_ATTN_READY, constants.AVAILABLE)
    failing = [conds[t]["message"] for t in order if t in conds and conds[t]["status"] != "True"]
    return failing[0] if failing else "all conditions true"


async def _reconcile_endpoint(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger
) -> None:
    settings = _settings(memo)

    async def run() -> Obj:
        return await endpoint_flow.reconcile(
            memo.kube,
            dict(body),
            _build_config(memo),
            settings.endpoint_url_template,
            datetime.now(UTC),
            autoscaler_setting=settings.autoscaler,
        )

    await _reconcile(constants.ENDPOINT_KIND, body, patch, run, _endpoint_event)


@kopf.on.create(constants.GROUP, constants.VERSION, constants.ENDPOINT_PLURAL)
@kopf.on.update(constants.GROUP, constants.VERSION, constants.ENDPOINT_PLURAL, field="spec")
@kopf.on.resume(constants.GROUP, constants.VERSION, constants.ENDPOINT_PLURAL)
async def endpoint_changed(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    await _reconcile_endpoint(body, patch, memo, logger)


@kopf.timer(
    constants.GROUP,
    constants.VERSION,
    constants.ENDPOINT_PLURAL,
    interval=RECONCILE_INTERVAL,
    # The create/resume handler reconciles first; a timer at once would race it.
    initial_delay=RECONCILE_INTERVAL,
    idle=0,
)
async def endpoint_timer(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Children change without events on the parent (a Job completes, pods become ready)."""
    if body.meta.get("deletionTimestamp"):
        return
    await _reconcile_endpoint(body, patch, memo, logger)


async def _reconcile_job(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo) -> None:
    now = datetime.now(UTC)
    if job_flow.expired(dict(body), now):
        await memo.kube.delete("TTSJob", body.meta.namespace, body.meta.name)
        return

    async def run() -> Obj | None:
        return await job_flow.reconcile(memo.kube, memo.jobs, dict(body), _build_config(memo), now)

    await _reconcile(
        constants.JOB_KIND, body, patch, run, lambda status: str(status.get("message", ""))
    )


@kopf.on.create(constants.GROUP, constants.VERSION, constants.JOB_PLURAL)
@kopf.on.resume(constants.GROUP, constants.VERSION, constants.JOB_PLURAL)
async def job_created(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    await _reconcile_job(body, patch, memo)


@kopf.timer(
    constants.GROUP,
    constants.VERSION,
    constants.JOB_PLURAL,
    interval=RECONCILE_INTERVAL,
    # The create/resume handler reconciles first; a timer at once would race it.
    initial_delay=RECONCILE_INTERVAL,
    idle=0,
)
async def job_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    if body.meta.get("deletionTimestamp"):
        return
    await _reconcile_job(body, patch, memo)


@kopf.on.delete(constants.GROUP, constants.VERSION, constants.JOB_PLURAL)
async def job_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    await job_flow.cancel(memo.jobs, memo.kube, dict(body))
    _forget(constants.JOB_KIND, body)


@kopf.on.event(constants.GROUP, constants.VERSION, constants.ENDPOINT_PLURAL)
@kopf.on.event(constants.GROUP, constants.VERSION, constants.JOB_PLURAL)
async def resource_gone(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """A deleted TTSEndpoint or TTSJob drops out of tts_operator_resources once it is gone."""
    if event.get("type") == "DELETED":
        _forget(str(body.get("kind")), body)


PLAIN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_format: str) -> None:
    """Log at INFO to stderr: ``plain`` text lines, or ``json``, one JSON object per line.

    Both go through Kopf's own setup (one stderr handler, replaced rather than added
    to on a second call). JSON lines come from Kopf's formatter: ``message``,
    ``severity``, ``timestamp``, and for a line about a resource its reference under
    ``object``; plain lines keep the operator's text format.
    """
    if log_format not in config.LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(config.LOG_FORMATS)}")
    json_lines = log_format == "json"
    kopf.configure(log_format=kopf.LogFormat.JSON if json_lines else kopf.LogFormat.PLAIN)
    if not json_lines:
        # kopf.configure has just appended its stderr handler to the root logger.
        logging.getLogger().handlers[-1].setFormatter(logging.Formatter(PLAIN_LOG_FORMAT))


def main(argv: Sequence[str] | None = None) -> int:
    settings = config.parse(argv, os.environ)
    setup_logging(settings.log_format)
    log.info(
        "watching %s",
        "all namespaces" if settings.all_namespaces else ", ".join(settings.namespaces),
    )
    start_http_server(settings.metrics_port)
    kopf.run(
        clusterwide=settings.all_namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        peering_name=settings.peering,
        standalone=settings.peering is None,
        memo=kopf.Memo(settings=settings),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
