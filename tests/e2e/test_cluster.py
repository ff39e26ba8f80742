"""The operator's flows against a real cluster (KUBECONFIG), skipped without one.

docs/e2e-kind.md sets one up with kind, the two images and an S3 server. The
test expects the operator to run in the cluster (helm install) and reads:

    KUBECONFIG            the cluster
    TTS_E2E_NAMESPACE     namespace to use (default tts-e2e; created and deleted)
    TTS_E2E_MODEL_SOURCE  s3://bucket/models/tiny/v1/ reachable from the cluster
    TTS_E2E_OUTPUT        s3://bucket/outputs/ writable from the cluster
    AWS_*                 credentials for that bucket, put into a Secret
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"), reason="needs a real cluster: set KUBECONFIG"
    ),
    pytest.mark.skipif(
        not os.environ.get("TTS_E2E_MODEL_SOURCE"),
        reason="set TTS_E2E_MODEL_SOURCE (docs/e2e-kind.md)",
    ),
]


def kubectl(*args: str, stdin: str | None = None) -> str:
    exe = shutil.which("kubectl") or str(ROOT / ".tools" / "bin" / "kubectl")
    proc = subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc.stdout


def get(kind: str, name: str, ns: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(kubectl("get", kind, name, "-n", ns, "-o", "json"))
    return doc


def wait_phase(kind: str, name: str, ns: str, phases: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = get(kind, name, ns)
        if obj.get("status", {}).get("phase") in phases:
            return obj
        time.sleep(2)  # polling the API server, as kubectl wait does
    raise AssertionError(f"{kind}/{name} never reached {phases}: {json.dumps(obj.get('status'))}")


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    ns = os.environ.get("TTS_E2E_NAMESPACE", "tts-e2e")
    kubectl("apply", "-f", str(ROOT / "crds"))
    kubectl("create", "namespace", ns)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "bucket"},
        "stringData": {
            k: os.environ.get(k, "")
            for k in (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_ENDPOINT_URL",
                "AWS_REGION",
            )
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(secret))
    yield ns
    kubectl("delete", "namespace", ns, "--wait=false")


def test_endpoint_becomes_ready_and_a_job_lands_in_the_bucket(namespace: str) -> None:
    endpoint = {
        "apiVersion": "tts.f5tts.dev/v1alpha1",
        "kind": "TTSEndpoint",
        "metadata": {"name": "e2e"},
        "spec": {
            "model": {"name": "tiny", "source": os.environ["TTS_E2E_MODEL_SOURCE"]},
            "storage": {"credentialsSecret": {"name": "bucket"}, "cache": {"size": "1Gi"}},
            "resources": {"gpus": 0},
            "replicas": 1,
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(endpoint))
    ready = wait_phase("ttsendpoint", "e2e", namespace, {"Ready", "Failed"}, 900)
    assert ready["status"]["phase"] == "Ready", ready["status"]
    conditions = {c["type"]: c["status"] for c in ready["status"]["conditions"]}
    assert conditions == {"CacheReady": "True", "FlashAttnReady": "True", "Available": "True"}
    output = os.environ.get("TTS_E2E_OUTPUT", "s3://tts-e2e/outputs/")
    job_name = f"e2e-{uuid.uuid4().hex[:6]}"
    job: dict[str, Any] = {
        "apiVersion": "tts.f5tts.dev/v1alpha1",
        "kind": "TTSJob",
        "metadata": {"name": job_name},
        "spec": {
            "endpointRef": {"name": "e2e"},
            "text": "Hello from a real cluster.",
            "output": {"uri": output, "format": "wav"},
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(job))
    done = wait_phase("ttsjob", job_name, namespace, {"Succeeded", "Failed"}, 600)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["outputUri"].startswith("s3://")
