"""KEDA's real operator scales an endpoint to zero, wakes it for a TTSJob, and its HPA
scales it out as TTSJobs wait.

The chain a user relies on, end to end: the operator counts the TTSJob as pending
(tts_operator_endpoint_pending_jobs, served on /metrics as the operator serves it),
a real Prometheus scrapes it as the chart's ServiceMonitor says (honor_labels), and
KEDA's operator, polling the ScaledObject's pending-jobs trigger, scales the
endpoint's Deployment from zero to one. From one up, the HPA that KEDA made reads
the same trigger through KEDA's metrics API server (the API server's
external.metrics.k8s.io), and the real HPA controller scales the Deployment out.
Nothing in the test scales anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from prometheus_client import start_http_server

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.chart.helm import ALL_ON, render
from tests.operator.conftest import RunOperator
from tests.operator.test_autoscaling import (
    goes_to_the_woken_endpoint,
    replicas,
    says_it_sleeps,
    wake_up_job,
)
from tests.operator.test_flows import setup, status
from tests.support.cluster import ClusterHandle, Kube
from tests.support.keda import running_keda
from tests.support.prometheus import running_prometheus, service_monitor_scrape
from tests.support.s3 import free_port
from tts_operator import config
from tts_operator.builders.objects import SCALE_DOWN_WINDOW_S

pytestmark = pytest.mark.slow

# How often KEDA reads the ScaledObject's triggers (spec.autoscaling.pollingIntervalSeconds).
KEDA_POLL_S = 5


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """This process's metrics (the operator's registry), scraped as prometheus-operator
    scrapes them from the chart's ServiceMonitor (its target labels, honorLabels)."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    scrape = service_monitor_scrape(render(ALL_ON), f"127.0.0.1:{port}")
    try:
        (tmp_path / "prometheus").mkdir()
        with running_prometheus(tmp_path / "prometheus", [scrape]) as url:
            yield url
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _scaled_object_condition(kube: Kube, ns: str, type_: str) -> dict[str, Any]:
    scaled = kube.get("scaledobjects", ns, "f5tts") or {}
    for cond in (scaled.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def test_keda_puts_an_idle_endpoint_to_sleep_wakes_it_and_scales_it_out_for_ttsjobs(
    kube: Kube,
    ns: str,
    run_operator: RunOperator,
    control_plane: ClusterHandle,
    prometheus: str,
    tmp_path: Path,
) -> None:
    if control_plane.plane is None:
        pytest.skip(
            "KEDA runs beside the test control plane, its metrics API server registered "
            "there: another cluster's external metrics API is its own KEDA's"
        )
    with running_keda(kube, control_plane.kubeconfig, tmp_path / "keda"):
        settings = config.Settings(
            namespaces=(ns,),
            endpoint_url_template="http://{service}.{namespace}.svc:{port}",
            autoscaler="keda",
            prometheus_url=prometheus,
        )
        run_operator(memo=kopf.Memo(settings=settings))
        scaling = {"minReplicas": 0, "maxReplicas": 2, "targetQueueDepth": 2}
        setup(kube, ns, autoscaling={**scaling, "pollingIntervalSeconds": KEDA_POLL_S})
        kube.wait_for(
            lambda: _scaled_object_condition(kube, ns, "Ready").get("status") == "True",
            timeout=120,
            message="KEDA never took up the ScaledObject",
        )
        # Nothing queued, no TTSJob: KEDA puts the endpoint to sleep.
        kube.wait_for(
            lambda: replicas(kube, ns) == 0,
            timeout=60,
            message="KEDA never scaled the idle endpoint to zero",
        )
        says_it_sleeps(kube, ns)
        assert _scaled_object_condition(kube, ns, "Active").get("status") != "True"

        wake_up_job(kube, ns)
        # KEDA reads the pending TTSJob through Prometheus and scales the Deployment up.
        kube.wait_for(
            lambda: replicas(kube, ns) >= 1,
            timeout=60,
            message="KEDA never woke the endpoint for the pending TTSJob",
        )
        assert _scaled_object_condition(kube, ns, "Active").get("status") == "True"
        kube.wait_for(
            lambda: status(kube, ns).get("readyReplicas", 0) >= 1,
            timeout=60,
            message="the woken endpoint never became ready",
        )

        goes_to_the_woken_endpoint(kube, ns)

        # Two more TTSJobs: three wait, at two a replica. KEDA's operator only wakes;
        # the HPA it made scales out, from the trigger KEDA's metrics API server serves.
        for n in (1, 2):
            wake_up_job(kube, ns, f"more-{n}")
        kube.wait_for(
            lambda: replicas(kube, ns) == 2,
            timeout=120,
            message="the HPA never scaled the endpoint out for three waiting TTSJobs",
        )
        hpa = kube.get("horizontalpodautoscalers", ns, "keda-hpa-f5tts") or {}
        conditions = {c["type"]: c for c in (hpa.get("status") or {}).get("conditions") or []}
        active = conditions.get("ScalingActive", {})
        assert (active.get("status"), active.get("reason")) == ("True", "ValidMetricFound")
        # It gives pods back no faster than the operator's own HPA would.
        behavior = hpa["spec"]["behavior"]["scaleDown"]
        assert behavior["stabilizationWindowSeconds"] == SCALE_DOWN_WINDOW_S
