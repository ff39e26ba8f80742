"""The operator's real metrics, served without a cluster, for the live Prometheus test.

    python -m tests.chart.operator_metrics_stub PORT

Imports tts_operator.main (so the metrics are the ones the operator registers,
on the registry its start_http_server serves), records resources by phase
through the same function the handlers call after each reconcile, and keeps
counting reconcile passes (with some errors) so that rates have data.
"""

from __future__ import annotations

import sys
import threading

from prometheus_client import start_http_server

from tts_operator import main as operator_main
from tts_operator.metrics import METRICS

ENDPOINTS = {"tts/a": "Ready", "tts/b": "Syncing", "tts/c": "Failed", "tts/d": "Degraded"}
JOBS = {"tts/j1": "Succeeded", "tts/j2": "Succeeded", "tts/j3": "Failed", "tts/j4": "Running"}
# TTSJobs waiting on endpoint tts/a (KEDA's wake-up trigger counts them).
PENDING = {"tts/j4": "a", "tts/j5": "a"}


def main(argv: list[str]) -> int:
    port = int(argv[0])
    for name, phase in ENDPOINTS.items():
        operator_main._record("TTSEndpoint", name, phase)
    for name, phase in JOBS.items():
        operator_main._record("TTSJob", name, phase)
    for ref, endpoint in PENDING.items():
        namespace, _, job = ref.partition("/")
        METRICS.pending_jobs.set(namespace, job, endpoint)
    start_http_server(port, addr="127.0.0.1")
    print("serving", flush=True)
    stop = threading.Event()
    n = 0
    while not stop.wait(0.2):
        n += 1
        kind = "TTSEndpoint" if n % 2 else "TTSJob"
        METRICS.reconciles.labels(kind, "error" if n % 5 == 0 else "ok").inc()
        METRICS.reconcile_seconds.labels(kind).observe(0.02 * (n % 7))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
