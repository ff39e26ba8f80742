"""The operator's own metrics, prefix tts_operator_."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class ResourcePhases:
    """The phase of every custom resource the operator knows, and the gauge counted from it.

    The gauge is set from the current set of objects on every change, never by
    increments, so a deleted resource drops out of it and a phase that no object
    has any more reads 0.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._phases: dict[tuple[str, str, str], str] = {}
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def set(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        """Record an object's phase (an object without a phase yet is not counted)."""
        with self._lock:
            if phase:
                self._phases[(kind, namespace, name)] = phase
            else:
                self._phases.pop((kind, namespace, name), None)
            self._publish()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """The object is deleted: it counts nowhere any more."""
        with self._lock:
            self._phases.pop((kind, namespace, name), None)
            self._publish()

    def phase(self, kind: str, namespace: str, name: str) -> str | None:
        return self._phases.get((kind, namespace, name))

    def _publish(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), phase in self._phases.items():
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        self._seen |= set(counts)
        for kind, phase in self._seen:
            self.gauge.labels(kind, phase).set(counts.get((kind, phase), 0))


class PendingJobs:
    """TTSJobs on an endpoint that have not finished, counted per endpoint (KEDA wakes on it).

    Like ResourcePhases, the gauge is set from the current set of jobs, so a finished or
    deleted job drops out and an endpoint without jobs reads 0.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._jobs: dict[tuple[str, str], str] = {}  # (namespace, job) -> endpoint
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def set(self, namespace: str, job: str, endpoint: str | None) -> None:
        """``endpoint`` is the endpoint the unfinished job waits on, or None to drop it."""
        with self._lock:
            if endpoint:
                self._jobs[(namespace, job)] = endpoint
            else:
                self._jobs.pop((namespace, job), None)
            counts: dict[tuple[str, str], int] = {}
            for (ns, _), ep in self._jobs.items():
                counts[(ns, ep)] = counts.get((ns, ep), 0) + 1
            self._seen |= set(counts)
            for ns, ep in self._seen:
                self.gauge.labels(ns, ep).set(counts.get((ns, ep), 0))


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.reconciles = Counter(
            "tts_operator_reconciles",
            "Reconcile passes by kind and result.",
            ["kind", "result"],
            registry=registry,
        )
        self.reconcile_seconds = Histogram(
            "tts_operator_reconcile_duration_seconds",
            "Time one reconcile pass took.",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.resources = Gauge(
            "tts_operator_resources",
            "Custom resources by kind and phase.",
            ["kind", "phase"],
            registry=registry,
        )
        self.phases = ResourcePhases(self.resources)
        self.pending_jobs = PendingJobs(
            Gauge(
                "tts_operator_endpoint_pending_jobs",
                "TTSJobs on an endpoint that have not finished (KEDA's wake-up trigger).",
                ["namespace", "endpoint"],
                registry=registry,
            )
        )


METRICS = OperatorMetrics()
