"""The operator under the real Kopf runtime against the emulated API server."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from prometheus_client import REGISTRY

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.operator.conftest import NAMESPACE, RunOperator, WaitFor
from tests.support.kube_emulator import ApiServer
from tts_operator import config
from tts_operator import constants as c
from tts_operator import main as operator_main

ROOT = Path(__file__).resolve().parents[2]
SECRET_VALUE = "super-secret-application-key-1234"
SUMMARY = {
    "event": "sync-complete",
    "model": "F5TTS_v1_Base",
    "digest": "d1" * 32,
    "bytesDownloaded": 1402692773,
    "seconds": 3.3,
}

assert operator_main.RECONCILE_INTERVAL < 1, "import tts_operator.main after setting the interval"


def _example(name: str) -> dict[str, Any]:
    for path in (ROOT / "examples").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["metadata"]["name"] == name:
                return copy.deepcopy(dict(doc))
    raise KeyError(name)


def _start(run_operator: RunOperator) -> Any:
    settings = config.Settings(
        namespaces=(NAMESPACE,), endpoint_url_template="http://{service}.{namespace}.svc:{port}"
    )
    return run_operator(memo=kopf.Memo(settings=settings))


def _setup(api: ApiServer) -> dict[str, Any]:
    secret = _example("b2-credentials")
    secret["stringData"]["AWS_SECRET_ACCESS_KEY"] = SECRET_VALUE
    api.create("secrets", NAMESPACE, secret)
    return api.create("ttsendpoints", NAMESPACE, _example("f5tts"))


def _endpoint(api: ApiServer) -> dict[str, Any]:
    obj = api.get("ttsendpoints", NAMESPACE, "f5tts")
    assert obj is not None
    return obj


def _status(api: ApiServer) -> dict[str, Any]:
    return _endpoint(api).get("status") or {}


def _cond(api: ApiServer, type_: str) -> dict[str, Any]:
    for cond in _status(api).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


def _cache_jobs(api: ApiServer) -> list[dict[str, Any]]:
    return [
        j
        for j in api.objects("jobs", NAMESPACE)
        if j["metadata"]["labels"].get(c.LABEL_COMPONENT) == c.COMPONENT_CACHE
    ]


def _one_cache_job(api: ApiServer, wait_for: WaitFor) -> dict[str, Any]:
    jobs = wait_for(lambda: _cache_jobs(api) or None, message="no cache Job")
    assert len(jobs) == 1
    return dict(jobs[0])


def test_endpoint_gets_its_children_then_scales_once_the_cache_is_ready(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    endpoint = _setup(api)
    uid = endpoint["metadata"]["uid"]
    for kind, name in [
        ("persistentvolumeclaims", "f5tts-cache"),
        ("deployments", "f5tts"),
        ("services", "f5tts"),
        ("poddisruptionbudgets", "f5tts"),
    ]:
        child = wait_for(
            lambda kind=kind, name=name: api.get(kind, NAMESPACE, name), message=f"no {kind}/{name}"
        )
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == uid
        assert owner["controller"] is True
    job = _one_cache_job(api, wait_for)
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    wait_for(lambda: _status(api).get("phase") == "Syncing", message="never Syncing")
    assert _cond(api, c.CACHE_READY)["status"] == "False"
    dep = api.get("deployments", NAMESPACE, "f5tts")
    assert dep is not None
    assert dep["spec"]["replicas"] == 0, "no GPU pod before the cache is ready"

    api.complete_job(NAMESPACE, job["metadata"]["name"], termination_message=json.dumps(SUMMARY))
    wait_for(
        lambda: _cond(api, c.CACHE_READY).get("status") == "True", message="CacheReady never True"
    )
    wait_for(
        lambda: (api.get("deployments", NAMESPACE, "f5tts") or {}).get("spec", {}).get("replicas")
        == 1,
        message="never scaled up",
    )
    status = _status(api)
    assert status["modelDigest"] == SUMMARY["digest"]
    assert status["cacheBytes"] == SUMMARY["bytesDownloaded"]

    api.mark_deployment_available(NAMESPACE, "f5tts")
    wait_for(lambda: _status(api).get("phase") == "Ready", message="never Ready")
    status = _status(api)
    conds = {cond["type"]: cond for cond in status["conditions"]}
    assert {t: cond["status"] for t, cond in conds.items()} == {
        "Available": "True",
        "CacheReady": "True",
        "FlashAttnReady": "True",
    }
    generation = _endpoint(api)["metadata"]["generation"]
    assert status["observedGeneration"] == generation
    assert all(cond["observedGeneration"] == generation for cond in conds.values())
    assert status["url"] == "http://f5tts.tts-test.svc:8000"
    assert status["readyReplicas"] == 1
    wait_for(
        lambda: {"Syncing", "Ready"} <= {e.get("reason") for e in api.events(NAMESPACE)},
        message="no events on transitions",
    )


def test_spec_change_rolls_the_pods_and_observed_generation_follows(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    _setup(api)
    api.complete_job(
        NAMESPACE,
        _one_cache_job(api, wait_for)["metadata"]["name"],
        termination_message=json.dumps(SUMMARY),
    )
    wait_for(
        lambda: (api.get("deployments", NAMESPACE, "f5tts") or {}).get("spec", {}).get("replicas")
        == 1
    )
    api.mark_deployment_available(NAMESPACE, "f5tts")
    wait_for(lambda: _status(api).get("phase") == "Ready")
    before = api.get("deployments", NAMESPACE, "f5tts")
    assert before is not None
    old_hash = before["spec"]["template"]["metadata"]["annotations"][c.ANNOTATION_SPEC_HASH]

    api.patch("ttsendpoints", NAMESPACE, "f5tts", {"spec": {"inference": {"nfeStep": 16}}})
    generation = _endpoint(api)["metadata"]["generation"]

    def rolled() -> dict[str, Any] | None:
        dep = api.get("deployments", NAMESPACE, "f5tts") or {}
        template = dep.get("spec", {}).get("template", {})
        changed = (
            template.get("metadata", {}).get("annotations", {}).get(c.ANNOTATION_SPEC_HASH)
            != old_hash
        )
        return dep if changed else None

    dep = wait_for(rolled, message="the pod template never changed")
    command = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--nfe-step") + 1] == "16"
    wait_for(
        lambda: _status(api).get("observedGeneration") == generation,
        message="observedGeneration never followed",
    )
    assert len(_cache_jobs(api)) == 1, "an inference change needs no new sync"


def test_operator_restart_half_way_creates_nothing_twice(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    runner = _start(run_operator)
    _setup(api)
    job = _one_cache_job(api, wait_for)
    wait_for(lambda: api.get("services", NAMESPACE, "f5tts"))
    runner.stop()
    api.complete_job(NAMESPACE, job["metadata"]["name"], termination_message=json.dumps(SUMMARY))
    runner.start()
    wait_for(
        lambda: (api.get("deployments", NAMESPACE, "f5tts") or {}).get("spec", {}).get("replicas")
        == 1
    )
    api.mark_deployment_available(NAMESPACE, "f5tts")
    wait_for(lambda: _status(api).get("phase") == "Ready")
    for kind in ("persistentvolumeclaims", "deployments", "services", "poddisruptionbudgets"):
        assert len(api.objects(kind, NAMESPACE)) == 1, kind
    assert len(_cache_jobs(api)) == 1


def test_failed_cache_sync_holds_the_gpu_pods_and_a_fixed_secret_recovers(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    _setup(api)
    job = _one_cache_job(api, wait_for)
    failure = {
        "event": "sync-failed",
        "message": "sync failed: 403 AccessDenied on s3://my-tts-bucket/models/F5TTS_v1_Base/v1/manifest.json: access denied",
    }
    api.fail_job(NAMESPACE, job["metadata"]["name"], termination_message=json.dumps(failure))
    wait_for(lambda: _status(api).get("phase") == "Failed", message="never Failed")
    cache = _cond(api, c.CACHE_READY)
    assert cache["status"] == "False"
    assert cache["reason"] == c.REASON_CACHE_FAILED
    assert (
        "403 AccessDenied on s3://my-tts-bucket/models/F5TTS_v1_Base/v1/manifest.json"
        in cache["message"]
    )
    dep = api.get("deployments", NAMESPACE, "f5tts")
    assert dep is not None
    assert dep["spec"]["replicas"] == 0
    wait_for(
        lambda: any(
            "403" in e.get("message", "")
            for e in api.events(NAMESPACE)
            if e.get("type") == "Warning"
        ),
        message="no Warning event naming the 403",
    )

    # The user fixes the key in the Secret; nothing is deleted by hand.
    api.patch(
        "secrets",
        NAMESPACE,
        "b2-credentials",
        {"stringData": {"AWS_SECRET_ACCESS_KEY": "the-right-key-5678"}},
    )
    fresh = wait_for(
        lambda: [j for j in _cache_jobs(api) if j["metadata"]["name"] != job["metadata"]["name"]]
        or None,
        message="no fresh cache Job after the Secret changed",
    )
    api.complete_job(
        NAMESPACE, fresh[0]["metadata"]["name"], termination_message=json.dumps(SUMMARY)
    )
    wait_for(
        lambda: (api.get("deployments", NAMESPACE, "f5tts") or {}).get("spec", {}).get("replicas")
        == 1,
        message="never scaled up",
    )
    wait_for(lambda: len(_cache_jobs(api)) == 1, message="the failed Job was not cleaned up")
    api.mark_deployment_available(NAMESPACE, "f5tts")
    wait_for(lambda: _status(api).get("phase") == "Ready", message="never recovered")


def test_credentials_are_never_copied_anywhere(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    _setup(api)
    api.complete_job(
        NAMESPACE,
        _one_cache_job(api, wait_for)["metadata"]["name"],
        termination_message=json.dumps(SUMMARY),
    )
    wait_for(lambda: _cond(api, c.CACHE_READY).get("status") == "True")
    for kind in (
        "ttsendpoints",
        "deployments",
        "jobs",
        "services",
        "persistentvolumeclaims",
        "poddisruptionbudgets",
        "events",
    ):
        assert SECRET_VALUE not in json.dumps(api.objects(kind, NAMESPACE)), kind


def test_job_waits_for_its_endpoint(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    _setup(api)
    api.create("ttsjobs", NAMESPACE, _example("hello-on-endpoint"))

    def pending() -> dict[str, Any] | None:
        job = api.get("ttsjobs", NAMESPACE, "hello-on-endpoint") or {}
        status = job.get("status") or {}
        return (
            status
            if status.get("phase") == "Pending" and "cache" in status.get("message", "")
            else None
        )

    status = wait_for(pending, message="never Pending")
    assert "waiting for TTSEndpoint f5tts" in status["message"]
    assert "cache" in status["message"]


@pytest.mark.parametrize("replicas", [0])
def test_scaled_to_zero_keeps_the_cache_warm(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor, replicas: int
) -> None:
    _start(run_operator)
    secret = _example("b2-credentials")
    api.create("secrets", NAMESPACE, secret)
    ep = _example("f5tts")
    ep["spec"]["replicas"] = replicas
    api.create("ttsendpoints", NAMESPACE, ep)
    api.complete_job(
        NAMESPACE,
        _one_cache_job(api, wait_for)["metadata"]["name"],
        termination_message=json.dumps(SUMMARY),
    )
    wait_for(lambda: _status(api).get("phase") == "Ready")
    assert _cond(api, c.AVAILABLE)["reason"] == c.REASON_SCALED_TO_ZERO


def test_a_deleted_endpoint_no_longer_counts_in_the_resources_gauge(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    def counted() -> float:
        labels = {"kind": "TTSEndpoint", "phase": "Syncing"}
        return REGISTRY.get_sample_value("tts_operator_resources", labels) or 0.0

    _start(run_operator)
    _setup(api)
    wait_for(lambda: _status(api).get("phase") == "Syncing", message="never Syncing")
    before = wait_for(lambda: counted() or None, message="never counted")
    api.delete("ttsendpoints", NAMESPACE, "f5tts")
    wait_for(lambda: counted() == before - 1, message="the deleted TTSEndpoint still counts")
