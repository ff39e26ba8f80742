"""spec.autoscaling on the real control plane: a HorizontalPodAutoscaler the real HPA
controller picks up, or a KEDA ScaledObject checked against KEDA's own CRD schema; the
operator leaves the replica count to it, and deletes it when autoscaling is removed."""

from __future__ import annotations

import os
from typing import Any

import kopf
import pytest
import yaml
from prometheus_client import REGISTRY

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.cluster import build
from tests.operator.conftest import RunOperator
from tests.operator.test_flows import setup, status
from tests.support.cluster import ApiError, Kube, install_crds, path
from tts_operator import config
from tts_operator.builders import objects as b

SCALING = {"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 2}


def start(run_operator: RunOperator, ns: str, engine: str) -> None:
    settings = config.Settings(
        namespaces=(ns,),
        endpoint_url_template="http://{service}.{namespace}.svc:{port}",
        autoscaler=engine,
        prometheus_url="http://prometheus.monitoring.svc:9090",
    )
    run_operator(memo=kopf.Memo(settings=settings))


def reconciles() -> float:
    labels = {"kind": "TTSEndpoint", "result": "ok"}
    return REGISTRY.get_sample_value("tts_operator_reconciles_total", labels) or 0.0


def replicas(kube: Kube, ns: str) -> int:
    return int((kube.get("deployments", ns, "f5tts") or {})["spec"]["replicas"])


def leaves_the_count_alone(kube: Kube, ns: str, count: int) -> None:
    """Set the Deployment's replicas as an autoscaler would; three reconcile passes later it holds."""
    kube.patch("deployments", ns, "f5tts", {"spec": {"replicas": count}})
    seen = reconciles()
    kube.wait_for(lambda: reconciles() >= seen + 3, message="the operator stopped reconciling")
    assert replicas(kube, ns) == count, "the operator fought the autoscaler"


WAKE_UP = "wake-up"


def says_it_sleeps(kube: Kube, ns: str) -> None:
    """The endpoint at zero pods is Ready, its Available condition says ScaledToZero."""
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready"
        and any(
            cd["type"] == "Available" and cd["reason"] == "ScaledToZero"
            for cd in status(kube, ns)["conditions"]
        ),
        message="scaled to zero is not reported as such",
    )


def wake_up_job(kube: Kube, ns: str, name: str = WAKE_UP) -> None:
    """A TTSJob for the endpoint f5tts."""
    kube.create(
        "ttsjobs",
        ns,
        {
            "metadata": {"name": name},
            "spec": {
                "endpointRef": {"name": "f5tts"},
                "text": "Wake up.",
                "output": {"uri": f"s3://my-tts-bucket/outputs/{name}.wav"},
            },
        },
    )


def wake_up_message(kube: Kube, ns: str) -> str:
    return str(((kube.get("ttsjobs", ns, WAKE_UP) or {}).get("status") or {}).get("message", ""))


def goes_to_the_woken_endpoint(kube: Kube, ns: str) -> None:
    """The TTSJob is sent to the endpoint (no server answers here: it is told "not now")."""
    kube.wait_for(
        lambda: any(
            said in wake_up_message(kube, ns) for said in ("did not take the job yet", "submitted")
        ),
        timeout=60,
        message="the job never went to the woken endpoint",
    )


def test_hpa_on_queue_depth_owns_the_replica_count_and_goes_when_autoscaling_does(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    start(run_operator, ns, "hpa")
    setup(kube, ns, autoscaling=SCALING)
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )
    hpa = kube.wait_for(lambda: kube.get("horizontalpodautoscalers", ns, "f5tts"), message="no HPA")
    spec = hpa["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 3)
    (metric,) = spec["metrics"]
    assert metric["pods"]["metric"]["name"] == "tts_queue_depth"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2"}
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "f5tts",
    }
    # The real HPA controller took it up (the custom metrics API is not served here).
    conditions = kube.wait_for(
        lambda: (kube.get("horizontalpodautoscalers", ns, "f5tts") or {})
        .get("status", {})
        .get("conditions"),
        timeout=60,
        message="the HPA controller never looked at it",
    )
    assert {cd["type"] for cd in conditions} >= {"AbleToScale"}

    leaves_the_count_alone(kube, ns, 2)
    kube.wait_for(
        lambda: status(kube, ns).get("readyReplicas") == 2,
        timeout=60,
        message="the endpoint never reported the autoscaler's count",
    )
    assert status(kube, ns)["phase"] == "Ready"

    kube.patch("ttsendpoints", ns, "f5tts", {"spec": {"autoscaling": None, "replicas": 1}})
    kube.wait_gone("horizontalpodautoscalers", ns, "f5tts", timeout=30)
    kube.wait_for(lambda: replicas(kube, ns) == 1, message="spec.replicas not restored")


@pytest.fixture(scope="module")
def keda_crd() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(build.keda_crd().read_text()) if d]
    (crd,) = docs
    return dict(crd)


def test_keda_scaled_object_matches_kedas_schema_and_can_scale_to_zero(
    kube: Kube, ns: str, run_operator: RunOperator, keda_crd: dict[str, Any]
) -> None:
    install_crds(kube, [keda_crd])
    start(run_operator, ns, "auto")  # KEDA's CRD is there: auto chooses it
    setup(kube, ns, autoscaling={**SCALING, "minReplicas": 0, "pollingIntervalSeconds": 5})
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )
    scaled = kube.wait_for(
        lambda: kube.get("scaledobjects", ns, "f5tts"), message="no ScaledObject"
    )
    assert kube.get("horizontalpodautoscalers", ns, "f5tts") is None
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 3)
    assert spec["pollingInterval"] == 5
    queries = {t["name"]: t["metadata"]["query"] for t in spec["triggers"]}
    assert f'namespace="{ns}"' in queries["queue-depth"]
    assert "tts_operator_endpoint_pending_jobs" in queries["pending-jobs"]
    # What the operator sends is valid under KEDA's schema with strict field validation
    # (an unknown field would be an error, not silently pruned).
    endpoint = kube.get("ttsendpoints", ns, "f5tts") or {}
    want = b.scaled_object(
        endpoint, b.BuildConfig(prometheus_url="http://prometheus.monitoring.svc:9090")
    )
    want["metadata"]["name"] = "strict-check"
    try:
        kube.request(
            "POST",
            path("scaledobjects", ns),
            want,
            query={"dryRun": "All", "fieldValidation": "Strict"},
        )
    except ApiError as e:  # pragma: no cover - the failure message is the point
        pytest.fail(f"KEDA's schema refuses the ScaledObject: {e}")

    # KEDA scales the endpoint to zero when idle: the operator does not bring it back.
    leaves_the_count_alone(kube, ns, 0)
    says_it_sleeps(kube, ns)

    # A TTSJob for the sleeping endpoint waits, says why, and counts in the metric KEDA
    # wakes on; once the autoscaler scales up, the job goes to the endpoint.
    wake_up_job(kube, ns)
    kube.wait_for(
        lambda: "scaled to zero by its autoscaler" in wake_up_message(kube, ns),
        message="no reason",
    )
    assert (kube.get("ttsjobs", ns, WAKE_UP) or {})["status"]["phase"] == "Pending"
    labels = {"namespace": ns, "endpoint": "f5tts"}
    assert REGISTRY.get_sample_value("tts_operator_endpoint_pending_jobs", labels) == 1
    kube.patch("deployments", ns, "f5tts", {"spec": {"replicas": 1}})  # what KEDA does
    goes_to_the_woken_endpoint(kube, ns)
