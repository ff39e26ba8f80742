"""tts_operator_resources counts the resources that exist, by their current phase."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tts_operator.metrics import OperatorMetrics


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
