"""The operator's own metrics, prefix tts_operator_."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


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


METRICS = OperatorMetrics()
