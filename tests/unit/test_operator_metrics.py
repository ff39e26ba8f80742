"""tts_operator_resources counts the resources that exist, by their current phase."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from prometheus_client import REGISTRY, CollectorRegistry

from tts_operator import constants, main
from tts_operator.metrics import METRICS, OperatorMetrics


def _count(registry: CollectorRegistry, kind: str, phase: str) -> float | None:
    return registry.get_sample_value("tts_operator_resources", {"kind": kind, "phase": phase})


def test_a_deleted_resource_no_longer_counts() -> None:
    registry = CollectorRegistry()
    phases = OperatorMetrics(registry).phases
    phases.set("TTSJob", "tts", "a", "Running")
    phases.set("TTSJob", "tts", "b", "Running")
    phases.set("TTSEndpoint", "tts", "a", "Ready")
    assert _count(registry, "TTSJob", "Running") == 2
    phases.set("TTSJob", "tts", "a", "Succeeded")
    assert (_count(registry, "TTSJob", "Running"), _count(registry, "TTSJob", "Succeeded")) == (
        1,
        1,
    )
    phases.forget("TTSJob", "tts", "a")
    phases.forget("TTSJob", "tts", "b")
    assert _count(registry, "TTSJob", "Succeeded") == 0, "its last phase stays counted"
    assert _count(registry, "TTSJob", "Running") == 0
    assert _count(registry, "TTSEndpoint", "Ready") == 1, "a same-named resource of another kind"
    phases.forget("TTSEndpoint", "tts", "a")
    assert _count(registry, "TTSEndpoint", "Ready") == 0


def test_the_same_name_in_another_namespace_is_another_resource() -> None:
    registry = CollectorRegistry()
    phases = OperatorMetrics(registry).phases
    phases.set("TTSEndpoint", "a", "f5tts", "Ready")
    phases.set("TTSEndpoint", "b", "f5tts", "Syncing")
    phases.forget("TTSEndpoint", "a", "f5tts")
    assert _count(registry, "TTSEndpoint", "Ready") == 0
    assert _count(registry, "TTSEndpoint", "Syncing") == 1


def test_a_late_record_of_a_deleted_object_counts_nowhere() -> None:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.phases.set("TTSJob", "tts", "a", "Running", "uid-1")
    metrics.phases.forget("TTSJob", "tts", "a", "uid-1")
    metrics.phases.set("TTSJob", "tts", "a", "Running", "uid-1")  # a pass that read it before
    assert _count(registry, "TTSJob", "Running") == 0
    metrics.phases.set("TTSJob", "tts", "a", "Pending", "uid-2")  # the same name, created anew
    assert _count(registry, "TTSJob", "Pending") == 1
    metrics.phases.set("TTSJob", "tts", "a", "Running", "uid-1")  # a later end of that pass
    assert _count(registry, "TTSJob", "Pending") == 1  # leaves the new object counted

    metrics.pending_jobs.set("tts", "a", "f5tts", "uid-1")
    metrics.pending_jobs.set("tts", "b", "f5tts", "uid-3")
    metrics.pending_jobs.forget("tts", "a", "uid-1")
    metrics.pending_jobs.set("tts", "a", "f5tts", "uid-1")
    waiting = {"namespace": "tts", "endpoint": "f5tts"}
    assert registry.get_sample_value("tts_operator_endpoint_pending_jobs", waiting) == 1


def test_only_the_latest_deleted_uids_are_remembered() -> None:
    registry = CollectorRegistry()
    phases = OperatorMetrics(registry).phases
    for n in range(phases.GONE_REMEMBERED + 1):
        phases.forget("TTSJob", "tts", f"j{n}", f"uid-{n}")
    phases.set("TTSJob", "tts", "j0", "Running", "uid-0")  # the oldest, forgotten in turn
    phases.set("TTSJob", "tts", "j1", "Running", "uid-1")
    assert _count(registry, "TTSJob", "Running") == 1


def test_a_pass_that_ends_after_the_deletion_does_not_count_the_resource_again() -> None:
    """The DELETED event is handled while a pass that read the TTSJob waits on the API
    server; the pass then ends with the phase it computed from what it read."""
    ns = "a-pass-ends-after-the-deletion"
    body = kopf.Body(
        {
            "apiVersion": f"{constants.GROUP}/{constants.VERSION}",
            "kind": constants.JOB_KIND,
            "metadata": {"namespace": ns, "name": "chapter", "uid": "uid-late-pass"},
            "spec": {"endpointRef": {"name": "f5tts"}},
            "status": {"phase": constants.PHASE_PENDING},
        }
    )

    async def run() -> dict[str, Any]:
        main._forget(constants.JOB_KIND, body)  # what the DELETED event's handler does
        return {"phase": constants.PHASE_PENDING}

    asyncio.run(main._reconcile(constants.JOB_KIND, body, kopf.Patch(), run, str))
    assert METRICS.phases.phase(constants.JOB_KIND, ns, "chapter") is None
    waiting = {"namespace": ns, "endpoint": "f5tts"}
    assert not REGISTRY.get_sample_value("tts_operator_endpoint_pending_jobs", waiting)
