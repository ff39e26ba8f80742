"""The operator's own metrics, prefix tts_operator_."""

from __future__ import annotations

import threading
from collections import OrderedDict

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class Tally:
    """Objects counted into a gauge by their labels, set from the current set on every change.

    Never increments: an object that goes (or whose labels change) drops out of its old
    series at once, and a series that no object has any more reads 0.

    A deleted object's uid is remembered (the last ``GONE_REMEMBERED`` of them): a
    reconcile pass that read the object before its deletion and ends after it cannot
    count it again. The same name created anew has another uid and counts.
    """

    GONE_REMEMBERED = 4096

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._labels: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._seen: set[tuple[str, ...]] = set()
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def put(
        self, key: tuple[str, ...], labels: tuple[str, ...] | None, uid: str | None = None
    ) -> None:
        """Count ``key`` under ``labels``; None counts it nowhere. A record of an object
        whose ``uid`` was dropped changes nothing: the key may be the same name's new object."""
        with self._lock:
            if uid and uid in self._gone:
                return
            self._put(key, labels)

    def drop(self, key: tuple[str, ...], uid: str | None = None) -> None:
        """The object is deleted: it counts nowhere, now or after."""
        with self._lock:
            if uid:
                self._gone[uid] = None
                self._gone.move_to_end(uid)
                while len(self._gone) > self.GONE_REMEMBERED:
                    self._gone.popitem(last=False)
            self._put(key, None)

    def _put(self, key: tuple[str, ...], labels: tuple[str, ...] | None) -> None:
        if labels is None:
            self._labels.pop(key, None)
        else:
            self._labels[key] = labels
        counts: dict[tuple[str, ...], int] = {}
        for value in self._labels.values():
            counts[value] = counts.get(value, 0) + 1
        self._seen |= set(counts)
        for value in self._seen:
            self.gauge.labels(*value).set(counts.get(value, 0))

    def labels_of(self, key: tuple[str, ...]) -> tuple[str, ...] | None:
        return self._labels.get(key)


class ResourcePhases(Tally):
    """The phase of every custom resource the operator knows, counted by kind and phase."""

    def set(
        self, kind: str, namespace: str, name: str, phase: str | None, uid: str | None = None
    ) -> None:
        """Record an object's phase (an object without a phase yet is not counted)."""
        self.put((kind, namespace, name), (kind, phase) if phase else None, uid)

    def forget(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """The object is deleted: it counts nowhere any more."""
        self.drop((kind, namespace, name), uid)

    def phase(self, kind: str, namespace: str, name: str) -> str | None:
        labels = self.labels_of((kind, namespace, name))
        return labels[1] if labels else None


class PendingJobs(Tally):
    """TTSJobs on an endpoint that have not finished, counted per endpoint (KEDA wakes on it)."""

    def set(self, namespace: str, job: str, endpoint: str | None, uid: str | None = None) -> None:
        """``endpoint`` is the endpoint the unfinished job waits on, or None to drop it."""
        self.put((namespace, job), (namespace, endpoint) if endpoint else None, uid)

    def forget(self, namespace: str, job: str, uid: str | None = None) -> None:
        """The TTSJob is deleted: it wakes nothing any more."""
        self.drop((namespace, job), uid)


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
