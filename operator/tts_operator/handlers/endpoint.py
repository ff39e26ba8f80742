"""TTSEndpoint: fetch children, call the builders, apply, write status.

Reconciles from current state (the children as they are), never from event
diffs, so a restarted operator reaches the same end state and creates nothing twice.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from tts_operator import constants as c
from tts_operator import status as st
from tts_operator.builders import objects as b
from tts_operator.builders.meta import Obj, parse_quantity
from tts_operator.kube import Kube

log = logging.getLogger("tts_operator.endpoint")


@dataclass(frozen=True)
class JobState:
    """What a batch/v1 Job and its pods say."""

    state: str  # running | succeeded | failed
    message: str = ""
    summary: dict[str, Any] | None = None
    failed_container: str | None = None
    reason: str | None = None  # the Job's own reason for failing, when it gave one that matters
    running: str | None = None  # the container of its pods running now (an init one first)
    said: str = ""  # the last line the running container logged, when the operator read it


def job_state(job: Obj | None, pods: list[Obj]) -> JobState | None:
    """Pure: the outcome of a Job from its status and its pods' termination messages."""
    if job is None:
        return None
    conds = {
        cond.get("type"): cond
        for cond in job.get("status", {}).get("conditions", [])
        if cond.get("status") == "True"
    }
    summary, failed_container, failure, running = None, None, "", None
    for pod in own_pods(job, pods):
        statuses = pod.get("status", {}).get("initContainerStatuses", []) + pod.get(
            "status", {}
        ).get("containerStatuses", [])
        for cs in statuses:
            if running is None and "running" in (cs.get("state") or {}):
                running = cs.get("name")
            term = cs.get("state", {}).get("terminated") or cs.get("lastState", {}).get(
                "terminated"
            )
            if not term:
                continue
            message = (term.get("message") or "").strip()
            parsed = json_line(message)
            if term.get("exitCode", 0) == 0 and parsed and parsed.get("event") == "sync-complete":
                summary = parsed
            elif term.get("exitCode", 0) != 0:
                failed_container = cs.get("name")
                failure = (
                    (parsed or {}).get("message")
                    or (parsed or {}).get("error")
                    or last_line(message)
                    or term.get("reason", "failed")
                )
    completions = int(job.get("spec", {}).get("completions") or 1)
    if "Complete" in conds or job.get("status", {}).get("succeeded", 0) >= completions:
        return JobState("succeeded", "cache synced", summary)
    if "Failed" in conds:
        if conds["Failed"].get("reason") == c.REASON_DEADLINE_EXCEEDED:
            # Its pods were stopped for it: their exit says nothing the deadline does not.
            return JobState(
                "failed",
                _deadline_message(conds["Failed"]),
                summary,
                reason=c.REASON_DEADLINE_EXCEEDED,
            )
        reason = (
            failure
            or conds["Failed"].get("message")
            or conds["Failed"].get("reason")
            or "the Job failed"
        )
        return JobState("failed", reason, summary, failed_container)
    return JobState("running", failure or "syncing", summary, failed_container, running=running)


def _deadline_message(cond: Obj) -> str:
    said = str(cond.get("message") or "the Job was active longer than its deadline")
    return f"DeadlineExceeded: {said} (spec.activeDeadlineSeconds)"


def own_pods(job: Obj, pods: list[Obj]) -> list[Obj]:
    """The pods of this Job, not of an earlier one by the same name still being deleted.

    Pods are listed by the job-name label; a pod whose controller-uid label or owner
    reference names another uid belongs to a Job that is gone.
    """
    uid = job.get("metadata", {}).get("uid")
    if not uid:
        return list(pods)
    out = []
    for pod in pods:
        meta = pod.get("metadata", {})
        label = (meta.get("labels") or {}).get("batch.kubernetes.io/controller-uid")
        owners = [
            ref.get("uid") for ref in meta.get("ownerReferences") or [] if ref.get("kind") == "Job"
        ]
        if (label and label != uid) or (owners and uid not in owners):
            continue
        out.append(pod)
    return out


_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
# The line `tts-inference sync` prints every few seconds (cache/sync.py, Progress.line).
_PROGRESS = re.compile(
    r"sync (?P<label>.+?): (?P<done>[\d.]+) (?P<done_unit>[KMGT]?i?B) / "
    r"(?P<total>[\d.]+) (?P<total_unit>[KMGT]?i?B) \((?P<pct>\d+)%\) "
    r"(?P<rate>[\d.]+) (?P<rate_unit>[KMGT]?i?B)/s ETA (?P<eta>\d+s|\?)"
)


def sync_progress(log: str) -> Obj | None:
    """Pure: the last progress line of a sync's log as status.cacheProgress, or None."""
    for line in reversed(log.splitlines()):
        match = _PROGRESS.search(line)
        if not match:
            continue
        eta = match["eta"]
        return {
            "percent": int(match["pct"]),
            "bytesDone": int(float(match["done"]) * _UNITS[match["done_unit"]]),
            "bytesTotal": int(float(match["total"]) * _UNITS[match["total_unit"]]),
            "bytesPerSecond": int(float(match["rate"]) * _UNITS[match["rate_unit"]]),
            "etaSeconds": int(eta[:-1]) if eta != "?" else None,
        }
    return None


async def running_log(kube: Kube, namespace: str, pods: list[Obj], container: str) -> str:
    """The last lines ``container`` logged, in the first pod where it is running ("" if none)."""
    for pod in pods:
        status = pod.get("status") or {}
        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        if not any(
            s.get("name") == container and "running" in (s.get("state") or {}) for s in statuses
        ):
            continue
        try:
            return await kube.log_tail(namespace, pod["metadata"]["name"], container)
        except ApiException as exc:  # the log is not there (yet): nothing this pass
            log.debug("no log of %s: %s", pod["metadata"]["name"], exc.status)
    return ""


def json_line(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object (a termination message's summary)."""
    for raw in reversed(text.splitlines()):
        line = raw.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def last_line(text: str) -> str:
    """The last non-blank line of ``text``, at most 500 characters."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def ready_replicas(deployment: Obj | None) -> int:
    return int((deployment or {}).get("status", {}).get("readyReplicas", 0) or 0)


def server_failure(pods: list[Obj]) -> str | None:
    """Pure: why the server containers of these pods keep ending, from the newest termination
    a pod reports (its message, as ``serve`` leaves it), or None while none failed."""
    found: tuple[str, str] | None = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            if cs.get("name") != "server":
                continue
            term = cs.get("state", {}).get("terminated") or cs.get("lastState", {}).get(
                "terminated"
            )
            if not term or term.get("exitCode", 0) == 0:
                continue
            message = last_line(term.get("message") or "") or term.get("reason") or "failed"
            when = str(term.get("finishedAt") or "")
            if found is None or when > found[0]:
                found = (when, f"the server exits with code {term.get('exitCode')}: {message}")
    return found[1] if found is not None else None


def endpoint_status(
    endpoint: Obj,
    cache: JobState | None,
    deployment: Obj | None,
    url: str,
    now: datetime,
    claim: ClaimSize | None = None,
    failing: str | None = None,
) -> Obj:
    """Pure: the status a TTSEndpoint should have, given what its children report."""
    spec, old = endpoint["spec"], endpoint.get("status", {}) or {}
    gen = endpoint["metadata"].get("generation")
    conds = old.get("conditions", [])
    flash_enabled = bool(spec.get("flashAttn", {}).get("enabled"))
    desired = int(spec.get("replicas", 1))
    if spec.get("autoscaling") and deployment and cache is not None and cache.state == "succeeded":
        # The autoscaler owns the count: what it asks for now is what is desired.
        desired = int((deployment.get("spec") or {}).get("replicas", desired))
    ready = ready_replicas(deployment)
    asked = int((deployment or {}).get("spec", {}).get("replicas", 0) or 0)
    out: Obj = {"url": url, "observedGeneration": gen, "replicas": asked, "readyReplicas": ready}

    if cache is None or cache.state == "running":
        message = "creating the cache Job"
        if cache is not None:
            message = {
                c.CONTAINER_INSTALL_FLASH_ATTN: "the cache Job is installing flash_attn",
                c.CONTAINER_SYNC: "the cache Job is syncing the model",
            }.get(str(cache.running), "the cache Job is starting")
        conds = st.set_condition(
            conds, c.CACHE_READY, False, c.REASON_CACHE_SYNCING, message, gen, now
        )
    elif cache.state == "succeeded":
        s = cache.summary or {}
        message = "model synced into the cache"
        if s:
            message += f": {s.get('bytesDownloaded', 0)} bytes in {s.get('seconds', 0)}s, digest {str(s.get('digest', ''))[:12]}"
            out["modelDigest"] = s.get("digest")
            out["cacheBytes"] = int(s.get("bytesDownloaded", 0))
            out["cacheSeconds"] = float(s.get("seconds", 0))
        conds = st.set_condition(
            conds, c.CACHE_READY, True, c.REASON_CACHE_SYNCED, message, gen, now
        )
    else:
        conds = st.set_condition(
            conds, c.CACHE_READY, False, c.REASON_CACHE_FAILED, cache.message, gen, now
        )

    if not flash_enabled:
        conds = st.set_condition(
            conds,
            c.FLASH_ATTN_READY,
            True,
            c.REASON_FLASH_ATTN_DISABLED,
            "flash_attn is not enabled",
            gen,
            now,
        )
    elif (
        cache is not None
        and cache.state == "failed"
        and cache.failed_container == c.CONTAINER_INSTALL_FLASH_ATTN
    ):
        conds = st.set_condition(
            conds, c.FLASH_ATTN_READY, False, c.REASON_FLASH_ATTN_FAILED, cache.message, gen, now
        )
    elif failing is not None and "flash_attn" in failing:
        # Installed in the cache, but the server cannot use it (a wheel for another torch or
        # CUDA than the GPU node's): the server stops rather than fall back, saying why.
        conds = st.set_condition(
            conds, c.FLASH_ATTN_READY, False, c.REASON_FLASH_ATTN_FAILED, failing, gen, now
        )
    elif cache is not None and (cache.state == "succeeded" or cache.running == c.CONTAINER_SYNC):
        # The sync runs only after its pod's install-flash-attn init container succeeded.
        conds = st.set_condition(
            conds,
            c.FLASH_ATTN_READY,
            True,
            c.REASON_FLASH_ATTN_INSTALLED,
            "flash_attn installed in the cache",
            gen,
            now,
        )
    else:
        said = (
            cache.said
            if cache is not None and cache.running == c.CONTAINER_INSTALL_FLASH_ATTN
            else ""
        )
        conds = st.set_condition(
            conds,
            c.FLASH_ATTN_READY,
            False,
            c.REASON_FLASH_ATTN_INSTALLING,
            "installing flash_attn into the cache" + (f": {said}" if said else ""),
            gen,
            now,
        )

    cache_ready = cache is not None and cache.state == "succeeded"
    if not cache_ready:
        available = (False, c.REASON_WAITING_FOR_CACHE, "no server runs until the cache is ready")
    elif desired == 0:
        why = (
            "scaled to zero by its autoscaler: a queued request or a pending TTSJob wakes it, "
            "and a pod is ready in seconds from the warm cache"
            if spec.get("autoscaling")
            else "spec.replicas is 0: the cache stays warm, no server runs"
        )
        available = (False, c.REASON_SCALED_TO_ZERO, why)
    elif ready >= 1:
        available = (True, c.REASON_REPLICAS_READY, f"{ready}/{desired} replicas ready")
    elif failing is not None:
        available = (False, c.REASON_SERVER_FAILING, f"0/{desired} replicas ready: {failing}")
    else:
        available = (False, c.REASON_REPLICAS_NOT_READY, f"0/{desired} replicas ready")
    conds = st.set_condition(conds, c.AVAILABLE, available[0], available[1], available[2], gen, now)
    if claim is not None:
        conds = st.set_condition(
            conds, c.CACHE_CLAIM_SIZED, claim.ok, claim.reason, claim.message, gen, now
        )

    if cache is not None and cache.state == "failed":
        phase = c.PHASE_FAILED
    elif not cache_ready:
        phase = c.PHASE_SYNCING
    elif desired == 0 or ready >= desired:
        phase = c.PHASE_READY
    elif ready > 0:
        phase = c.PHASE_DEGRADED
    else:
        phase = c.PHASE_PENDING
    out["phase"] = phase
    out["conditions"] = conds
    return out


async def _job_pods(kube: Kube, namespace: str, job_name: str) -> list[Obj]:
    return await kube.list("Pod", namespace, f"batch.kubernetes.io/job-name={job_name}")


@dataclass(frozen=True)
class ClaimSize:
    """Whether the cache claim has the size the spec asks for (the CacheClaimSized condition)."""

    ok: bool
    reason: str
    message: str


def template_changed(have: Obj, want: Obj) -> bool:
    """Pure: whether a Job was made from another template than ``want`` (unknown: no)."""
    had = (have["metadata"].get("annotations") or {}).get(c.ANNOTATION_SPEC_HASH)
    return had is not None and had != want["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]


def claim_resize(want: str, have: str) -> str | None:
    """Pure: "grow", "shrink" or None (same size) for a claim of ``have`` asked to be ``want``."""
    wanted, current = parse_quantity(want), parse_quantity(have)
    if wanted == current:
        return None
    return "grow" if wanted > current else "shrink"


async def sync_claim(kube: Kube, endpoint: Obj) -> ClaimSize:
    """Create the cache claim, or grow it by patch; a shrink is refused with a condition.

    Kubernetes never shrinks a PersistentVolumeClaim, and grows one only where its
    storage class allows expansion: both end as a False condition that says so, while
    the endpoint keeps serving from the claim it has.
    """
    pvc = b.cache_pvc(endpoint)
    if pvc is None:
        name = endpoint["spec"]["storage"]["cache"]["existingClaim"]
        return ClaimSize(
            True, c.REASON_CLAIM_EXISTING, f"the endpoint uses the existing claim {name}"
        )
    ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
    want = pvc["spec"]["resources"]["requests"]["storage"]
    existing = await kube.get("PersistentVolumeClaim", ns, name)
    if existing is None:
        await kube.create(pvc)
        return ClaimSize(True, c.REASON_CLAIM_SIZE_MATCHES, f"claim {name} requests {want}")
    have = existing.get("spec", {}).get("resources", {}).get("requests", {}).get("storage", want)
    change = claim_resize(want, have)
    if change == "shrink":
        return ClaimSize(
            False,
            c.REASON_CLAIM_SHRINK_REFUSED,
            f"spec.storage.cache.size {want} is below claim {name}'s {have}, and a "
            f"PersistentVolumeClaim cannot shrink: set it back to {have} or more, or delete "
            "the endpoint to start with a new claim",
        )
    if change == "grow":
        try:
            await kube.patch(
                "PersistentVolumeClaim",
                ns,
                name,
                {"spec": {"resources": {"requests": {"storage": want}}}},
            )
        except ApiException as exc:
            if exc.status not in (403, 422):
                raise
            return ClaimSize(
                False,
                c.REASON_CLAIM_EXPANSION_REFUSED,
                f"claim {name} cannot grow from {have} to {want}: {api_message(exc)}",
            )
        return ClaimSize(
            True, c.REASON_CLAIM_EXPANDING, f"claim {name} asked to grow from {have} to {want}"
        )
    capacity = (existing.get("status") or {}).get("capacity", {}).get("storage")
    if capacity and claim_resize(want, capacity) == "grow":
        return ClaimSize(
            True, c.REASON_CLAIM_EXPANDING, f"claim {name} is growing from {capacity} to {want}"
        )
    return ClaimSize(True, c.REASON_CLAIM_SIZE_MATCHES, f"claim {name} requests {want}")


def api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


SERVICE_MONITOR_CRD = "servicemonitors.monitoring.coreos.com"
SCALED_OBJECT_CRD = "scaledobjects.keda.sh"
# Optional children every cluster serves; ServiceMonitor and ScaledObject when their CRDs are there.
ALWAYS_SERVED = ("Service", "PodDisruptionBudget", "HorizontalPodAutoscaler")


async def autoscaler_engine(kube: Kube, setting: str) -> str:
    """``hpa`` or ``keda``: the setting, or with ``auto`` KEDA when its CRD is installed."""
    if setting in (b.AUTOSCALER_HPA, b.AUTOSCALER_KEDA):
        return setting
    return b.AUTOSCALER_KEDA if await kube.crd_exists(SCALED_OBJECT_CRD) else b.AUTOSCALER_HPA


def deployment_patch(have: Obj, want: Obj, *, autoscaled: bool) -> Obj | None:
    """Pure: the merge patch that brings the Deployment to ``want``, or None when it is there.

    The replica count is the spec's until the endpoint's autoscaler exists (it is made in
    the pass that first scales the Deployment up, once the cache is ready); from then on
    the autoscaler decides it, zero included.
    """
    have_hash = have["metadata"].get("annotations", {}).get(c.ANNOTATION_SPEC_HASH)
    want_hash = want["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]
    spec = dict(want["spec"])
    have_replicas = int(have["spec"].get("replicas", 1))
    if autoscaled:
        del spec["replicas"]
    if have_hash == want_hash and spec.get("replicas", have_replicas) == have_replicas:
        return None
    return {"metadata": {"annotations": want["metadata"]["annotations"]}, "spec": spec}


def covers(have: Any, want: Any) -> bool:
    """Pure: whether ``have`` holds every field of ``want`` (fields the server adds are ignored)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(covers(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(covers(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)


async def sync_children(
    kube: Kube,
    endpoint: Obj,
    wanted: list[Obj],
    served: list[str],
    known: Mapping[tuple[str, str], Obj | None] | None = None,
) -> None:
    """Create what is missing, update what differs, delete what the endpoint owns and no
    longer wants (of the ``served`` kinds). ``known``: children this pass already read,
    by (kind, name), so each is read once."""
    ns, uid = endpoint["metadata"]["namespace"], endpoint["metadata"]["uid"]
    keep = {(obj["kind"], obj["metadata"]["name"]) for obj in wanted}
    known = known or {}
    for obj in wanted:
        name = obj["metadata"]["name"]
        key = (obj["kind"], name)
        have = known[key] if key in known else await kube.get(obj["kind"], ns, name)
        if have is None:
            await kube.create(obj)
        elif not covers(have, {"metadata": obj["metadata"], "spec": obj["spec"]}):
            meta = {k: obj["metadata"][k] for k in ("labels", "ownerReferences")}
            await kube.patch(obj["kind"], ns, name, {"metadata": meta, "spec": obj["spec"]})
            log.info("updated %s %s/%s to match the endpoint", obj["kind"], ns, name)
    selector = (
        f"{c.LABEL_INSTANCE}={endpoint['metadata']['name']},"
        f"{c.LABEL_KIND}={endpoint['kind'].lower()}"
    )
    for kind in served:
        for have in await kube.list(kind, ns, selector):
            owners = {ref.get("uid") for ref in have["metadata"].get("ownerReferences") or []}
            if uid in owners and (kind, have["metadata"]["name"]) not in keep:
                await kube.delete(kind, ns, have["metadata"]["name"])


async def reconcile(
    kube: Kube,
    endpoint: Obj,
    config: b.BuildConfig,
    url_template: str,
    now: datetime,
    autoscaler_setting: str = "auto",
) -> Obj:
    """Bring the children to the spec; return the status to write."""
    ns = endpoint["metadata"]["namespace"]
    secret_name = endpoint["spec"]["storage"]["credentialsSecret"]["name"]
    secret = await kube.get("Secret", ns, secret_name)
    secret_version = (secret or {}).get("metadata", {}).get("resourceVersion", "missing")

    claim = await sync_claim(kube, endpoint)

    job = b.cache_job(endpoint, config, secret_version=secret_version)
    job_name = job["metadata"]["name"]
    current = await kube.get("Job", ns, job_name)
    if current is None:
        current = await kube.create(job)
    pods = await _job_pods(kube, ns, job_name)
    cache = job_state(current, pods)
    progress = None
    if cache is not None and cache.state == "running":
        if template_changed(current, job):
            # Its template cannot be patched: replace it (the next pass makes the new one).
            await kube.delete("Job", ns, job_name)
            cache = JobState("running", "the cache Job is being replaced: its template changed")
        elif cache.running == c.CONTAINER_SYNC:
            progress = sync_progress(
                await running_log(kube, ns, own_pods(current, pods), c.CONTAINER_SYNC)
            )
        elif cache.running == c.CONTAINER_INSTALL_FLASH_ATTN:
            said = await running_log(
                kube, ns, own_pods(current, pods), c.CONTAINER_INSTALL_FLASH_ATTN
            )
            cache = replace(cache, said=last_line(said)[:300])
    if cache is not None and cache.state == "succeeded":
        # Older cache Jobs of this endpoint (other revision, secret or wheel) are done with.
        selector = f"{c.LABEL_INSTANCE}={endpoint['metadata']['name']},{c.LABEL_COMPONENT}={c.COMPONENT_CACHE},{c.LABEL_KIND}=ttsendpoint"
        for old in await kube.list("Job", ns, selector):
            if old["metadata"]["name"] != job_name:
                await kube.delete("Job", ns, old["metadata"]["name"])

    cache_ready = cache is not None and cache.state == "succeeded"
    engine = await autoscaler_engine(kube, autoscaler_setting)
    scaler = b.autoscaler(endpoint, config, engine) if cache_ready else None
    known: dict[tuple[str, str], Obj | None] = {}
    if scaler is not None:
        key = (scaler["kind"], scaler["metadata"]["name"])
        known[key] = await kube.get(key[0], ns, key[1])
    scaler_exists = any(have is not None for have in known.values())
    want = b.deployment(endpoint, config, cache_ready=cache_ready)
    deployment = await kube.get("Deployment", ns, want["metadata"]["name"])
    if deployment is None:
        deployment = await kube.create(want)
    else:
        patch = deployment_patch(deployment, want, autoscaled=scaler_exists)
        if patch is not None:
            deployment = await kube.patch("Deployment", ns, want["metadata"]["name"], patch)
    children = [b.service(endpoint), b.pod_disruption_budget(endpoint)]
    served = list(ALWAYS_SERVED)
    if await kube.crd_exists(SERVICE_MONITOR_CRD):
        served.append("ServiceMonitor")
        children.append(b.service_monitor(endpoint))
    if engine == b.AUTOSCALER_KEDA:
        served.append("ScaledObject")
    if scaler is not None:
        children.append(scaler)
    await sync_children(kube, endpoint, children, served, known)

    if secret is None and (cache is None or cache.state != "succeeded"):
        cache = JobState(
            "failed", f"Secret {ns}/{secret_name} (spec.storage.credentialsSecret) not found"
        )
    failing = None
    if cache_ready and ready_replicas(deployment) == 0:
        selector = ",".join(f"{k}={v}" for k, v in b.server_selector(endpoint).items())
        failing = server_failure(await kube.list("Pod", ns, selector))
    status = endpoint_status(
        endpoint, cache, deployment, b.endpoint_url(endpoint, url_template), now, claim, failing
    )
    if progress is not None:
        status["cacheProgress"] = progress
    elif cache is not None and cache.state == "succeeded":
        total = (cache.summary or {}).get("bytesDownloaded")
        status["cacheProgress"] = {"percent": 100, **({"bytesDone": int(total)} if total else {})}
    return status
