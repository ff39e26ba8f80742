"""The operator under the real Kopf runtime on the real test control plane.

Kubernetes' own controllers decide here: the Job controller completes the cache
Job, the Deployment and ReplicaSet controllers roll pods, the scheduler places
them on kwok's nodes, the garbage collector removes children. The operator runs
with a token of the chart's ServiceAccount (tests/operator/conftest.py).
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.operator.conftest import RunOperator
from tests.support.cluster import (
    HOLD_LABEL,
    INIT_HOLD_LABEL,
    ClusterHandle,
    Kube,
    write_container_log,
)
from tts_inference.storage.progress import Progress
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
GPU_NODES = {"gpu-a", "gpu-b"}

assert operator_main.RECONCILE_INTERVAL < 1, "import tts_operator.main after setting the interval"

Obj = dict[str, Any]


def example(name: str) -> Obj:
    for path in (ROOT / "examples").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["metadata"]["name"] == name:
                return copy.deepcopy(dict(doc))
    raise KeyError(name)


def setup(kube: Kube, ns: str, **spec: Any) -> Obj:
    """The examples' Secret and TTSEndpoint, as a user applies them (``spec`` merged in)."""
    secret = example("b2-credentials")
    secret["stringData"]["AWS_SECRET_ACCESS_KEY"] = SECRET_VALUE
    kube.create("secrets", ns, secret)
    endpoint = example("f5tts")
    endpoint["spec"].update(spec)
    return kube.create("ttsendpoints", ns, endpoint)


def status(kube: Kube, ns: str, name: str = "f5tts") -> Obj:
    return dict((kube.get("ttsendpoints", ns, name) or {}).get("status") or {})


def cond(kube: Kube, ns: str, type_: str) -> Obj:
    for item in status(kube, ns).get("conditions", []):
        if item["type"] == type_:
            return dict(item)
    return {}


def cache_jobs(kube: Kube, ns: str) -> list[Obj]:
    return kube.list("jobs", ns, f"{c.LABEL_COMPONENT}={c.COMPONENT_CACHE}")


def one_cache_job(kube: Kube, ns: str) -> Obj:
    jobs = kube.wait_for(lambda: cache_jobs(kube, ns), message="no cache Job")
    assert len(jobs) == 1
    return jobs[0]


def job_condition(job: Obj, type_: str) -> bool:
    return any(
        cd["type"] == type_ and cd["status"] == "True"
        for cd in (job.get("status") or {}).get("conditions") or []
    )


def server_pods(kube: Kube, ns: str) -> list[Obj]:
    return kube.list("pods", ns, f"{c.LABEL_COMPONENT}={c.COMPONENT_SERVER}")


def replicas(kube: Kube, ns: str) -> int | None:
    dep = kube.get("deployments", ns, "f5tts")
    return None if dep is None else int(dep["spec"].get("replicas", 1))


def job_pods(kube: Kube, ns: str, job: Obj) -> list[Obj]:
    """The pods of this Job, selected by its uid: a Job replaced under the same name
    leaves its pods behind for the garbage collector, and they are not this Job's."""
    return kube.list("pods", ns, f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}")


def held_pod(kube: Kube, ns: str, job: Obj) -> Obj:
    """The Running pod of a held Job (kwok leaves it to the test, as a kubelet would)."""

    def running() -> Obj | None:
        pods = [
            p for p in job_pods(kube, ns, job) if (p.get("status") or {}).get("phase") == "Running"
        ]
        return pods[0] if pods else None

    return kube.wait_for(running, message=f"no running pod of Job {job['metadata']['name']}")


def finish_pod(kube: Kube, ns: str, pod: Obj, exit_code: int, message: str) -> None:
    """Write what a kubelet writes when the pod's container exits."""
    now = pod["status"].get("startTime")
    statuses = [
        {
            "name": ct["name"],
            "image": ct["image"],
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "message": message,
                    "startedAt": now,
                    "finishedAt": now,
                }
            },
        }
        for ct in pod["spec"]["containers"]
    ]
    kube.patch_status(
        "pods",
        ns,
        pod["metadata"]["name"],
        {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": statuses,
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
            ],
        },
    )


def test_examples_reach_ready_on_gpu_nodes_only_and_roll_out_and_clean_up(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    endpoint = setup(kube, ns, replicas=2)
    uid = endpoint["metadata"]["uid"]

    # The cache Job: no GPU requested, completed by the real Job controller.
    job = one_cache_job(kube, ns)
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    for ct in job["spec"]["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in str(ct.get("resources", {}))
    done: Obj = kube.wait_for(
        lambda: (j := kube.get("jobs", ns, job["metadata"]["name"]))
        and job_condition(j, "Complete")
        and j,
        timeout=60,
        message="the cache Job never completed",
    )

    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )
    st = status(kube, ns)
    conds = {item["type"]: item for item in st["conditions"]}
    assert {t: item["status"] for t, item in conds.items()} == {
        "Available": "True",
        "CacheClaimSized": "True",
        "CacheReady": "True",
        "FlashAttnReady": "True",
    }
    generation = kube.get("ttsendpoints", ns, "f5tts")["metadata"]["generation"]  # type: ignore[index]
    assert st["observedGeneration"] == generation
    assert all(item["observedGeneration"] == generation for item in conds.values())
    assert st["url"] == f"http://f5tts.{ns}.svc:8000"
    assert st["readyReplicas"] == 2

    # Only once the cache was complete did any server pod exist; all on GPU nodes.
    pods = server_pods(kube, ns)
    assert len(pods) == 2
    completed_at = done["status"]["completionTime"]
    for pod in pods:
        assert pod["metadata"]["creationTimestamp"] >= completed_at
        assert pod["spec"]["nodeName"] in GPU_NODES, pod["spec"]["nodeName"]
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert len({pod["spec"]["nodeName"] for pod in pods}) == 1, "ReadWriteOnce: one node"
    placed = {p["spec"].get("nodeName") for p in kube.list("pods", ns)}
    assert not placed & {"cpu-a", "gpu-tainted"}
    events = {e.get("reason") for e in kube.events(ns)}
    assert {"Syncing", "Ready"} <= events

    # A spec change rolls out a new ReplicaSet, and observedGeneration follows.
    old_sets = {rs["metadata"]["name"] for rs in kube.list("replicasets", ns)}
    kube.patch("ttsendpoints", ns, "f5tts", {"spec": {"inference": {"nfeStep": 16}}})
    generation += 1

    def rolled_out() -> bool:
        sets = kube.list("replicasets", ns)
        new = [rs for rs in sets if rs["metadata"]["name"] not in old_sets]
        return bool(new) and int(new[0].get("status", {}).get("readyReplicas") or 0) == 2

    kube.wait_for(rolled_out, timeout=60, message="no new ReplicaSet rolled out")
    kube.wait_for(
        lambda: status(kube, ns).get("observedGeneration") == generation
        and status(kube, ns).get("phase") == "Ready",
        timeout=30,
        message="observedGeneration never followed",
    )
    deployment = kube.get("deployments", ns, "f5tts") or {}
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--nfe-step") + 1] == "16"
    assert len(cache_jobs(kube, ns)) == 1, "an inference change needs no new sync"

    # Deleting the endpoint removes every child through the garbage collector.
    kube.delete("ttsendpoints", ns, "f5tts")

    def children() -> list[str]:
        left = []
        for kind in (
            "deployments",
            "replicasets",
            "pods",
            "jobs",
            "services",
            "poddisruptionbudgets",
            "persistentvolumeclaims",
        ):
            left += [f"{kind}/{o['metadata']['name']}" for o in kube.list(kind, ns)]
        return left

    kube.wait_for(lambda: not children(), timeout=180, message="children left behind")


def test_operator_restart_half_way_creates_nothing_twice(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    runner = run_operator()
    # The cache Job is held: the operator is stopped while it runs.
    setup(kube, ns, nodeSelector={"nvidia.com/gpu.present": "true", HOLD_LABEL: "true"})
    job = one_cache_job(kube, ns)
    kube.wait_for(lambda: kube.get("services", ns, "f5tts"), message="no Service")
    pod = held_pod(kube, ns, job)
    runner.stop()
    finish_pod(kube, ns, pod, 0, json.dumps(SUMMARY))
    kube.wait_for(
        lambda: job_condition(kube.get("jobs", ns, job["metadata"]["name"]) or {}, "Complete"),
        message="the cache Job never completed",
    )
    runner.start()
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )
    for kind in ("persistentvolumeclaims", "deployments", "services", "poddisruptionbudgets"):
        assert len(kube.list(kind, ns)) == 1, kind
    assert len(cache_jobs(kube, ns)) == 1
    assert len(kube.list("replicasets", ns)) == 1
    st = status(kube, ns)
    assert st["modelDigest"] == SUMMARY["digest"]
    assert st["cacheBytes"] == SUMMARY["bytesDownloaded"]


def test_failed_cache_sync_holds_the_gpu_pods_and_a_fixed_secret_recovers(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    setup(kube, ns, nodeSelector={"nvidia.com/gpu.present": "true", HOLD_LABEL: "true"})
    job = one_cache_job(kube, ns)
    failure = {
        "event": "sync-failed",
        "message": "sync failed: 403 AccessDenied on s3://my-tts-bucket/models/F5TTS_v1_Base/v1/manifest.json: access denied",
    }
    # A permanent failure (exit 2) fails the Job at once: no retries against a wrong key.
    finish_pod(kube, ns, held_pod(kube, ns, job), 2, json.dumps(failure))
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Failed", timeout=30, message="never Failed"
    )
    cache = cond(kube, ns, c.CACHE_READY)
    assert cache["status"] == "False"
    assert cache["reason"] == c.REASON_CACHE_FAILED
    assert (
        "403 AccessDenied on s3://my-tts-bucket/models/F5TTS_v1_Base/v1/manifest.json"
        in cache["message"]
    )
    assert replicas(kube, ns) == 0
    assert not server_pods(kube, ns)
    kube.wait_for(
        lambda: any(
            "403" in e.get("message", "") for e in kube.events(ns) if e.get("type") == "Warning"
        ),
        message="no Warning event naming the 403",
    )

    # The user fixes the key in the Secret; nothing is deleted by hand.
    kube.patch(
        "secrets", ns, "b2-credentials", {"stringData": {"AWS_SECRET_ACCESS_KEY": "right-5678"}}
    )
    fresh = kube.wait_for(
        lambda: [
            j for j in cache_jobs(kube, ns) if j["metadata"]["name"] != job["metadata"]["name"]
        ],
        message="no fresh cache Job after the Secret changed",
    )
    finish_pod(kube, ns, held_pod(kube, ns, fresh[0]), 0, json.dumps(SUMMARY))
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never recovered"
    )
    kube.wait_for(
        lambda: len(cache_jobs(kube, ns)) == 1, message="the failed Job was not cleaned up"
    )
    assert status(kube, ns)["modelDigest"] == SUMMARY["digest"]


def test_credentials_are_never_copied_anywhere(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    setup(kube, ns)
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )
    for kind in (
        "ttsendpoints",
        "deployments",
        "replicasets",
        "pods",
        "jobs",
        "services",
        "persistentvolumeclaims",
        "poddisruptionbudgets",
        "events",
    ):
        assert SECRET_VALUE not in json.dumps(kube.list(kind, ns)), kind


def test_job_waits_for_its_endpoint(kube: Kube, ns: str, run_operator: RunOperator) -> None:
    run_operator()
    setup(kube, ns, nodeSelector={"nvidia.com/gpu.present": "true", HOLD_LABEL: "true"})
    kube.create("ttsjobs", ns, example("hello-on-endpoint"))

    def pending() -> Obj | None:
        job = kube.get("ttsjobs", ns, "hello-on-endpoint") or {}
        st = job.get("status") or {}
        return st if st.get("phase") == "Pending" and "cache" in st.get("message", "") else None

    st = kube.wait_for(pending, message="never Pending")
    assert "waiting for TTSEndpoint f5tts" in st["message"]


def test_scaled_to_zero_keeps_the_cache_warm(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    setup(kube, ns, replicas=0)
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )
    assert cond(kube, ns, c.AVAILABLE)["reason"] == c.REASON_SCALED_TO_ZERO
    assert cond(kube, ns, c.CACHE_READY)["status"] == "True"
    assert not server_pods(kube, ns)
    assert len(kube.list("persistentvolumeclaims", ns)) == 1


def test_a_deleted_endpoint_no_longer_counts_in_the_resources_gauge(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    def counted() -> float:
        labels = {"kind": "TTSEndpoint", "phase": "Syncing"}
        return REGISTRY.get_sample_value("tts_operator_resources", labels) or 0.0

    before = counted()
    run_operator()
    setup(kube, ns, nodeSelector={"nvidia.com/gpu.present": "true", HOLD_LABEL: "true"})
    kube.wait_for(lambda: counted() == before + 1, message="never counted")
    kube.delete("ttsendpoints", ns, "f5tts")
    kube.wait_for(lambda: counted() == before, message="the deleted TTSEndpoint still counts")


def test_scaling_up_adds_pods_and_leaves_the_serving_ones_alone(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    setup(kube, ns, replicas=3)
    kube.wait_for(
        lambda: status(kube, ns).get("readyReplicas") == 3, timeout=60, message="never 3 ready"
    )
    serving = {p["metadata"]["uid"] for p in server_pods(kube, ns)}
    assert len(serving) == 3
    kube.patch("ttsendpoints", ns, "f5tts", {"spec": {"replicas": 4}})
    kube.wait_for(
        lambda: status(kube, ns).get("readyReplicas") == 4, timeout=60, message="never 4 ready"
    )
    pods = server_pods(kube, ns)
    assert serving <= {p["metadata"]["uid"] for p in pods}, "a serving pod was replaced"
    assert not any(p["metadata"].get("deletionTimestamp") for p in pods)
    assert len(kube.list("replicasets", ns)) == 1, "scaling rolled out a new ReplicaSet"


def test_children_edited_or_deleted_by_hand_are_brought_back(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    setup(kube, ns)
    kube.wait_for(lambda: kube.get("poddisruptionbudgets", ns, "f5tts"), message="no PDB")
    kube.patch("services", ns, "f5tts", {"spec": {"ports": [{"name": "http", "port": 9999}]}})
    kube.delete("poddisruptionbudgets", ns, "f5tts")
    kube.wait_for(
        lambda: [p["port"] for p in (kube.get("services", ns, "f5tts") or {})["spec"]["ports"]]
        == [8000],
        message="the Service was not restored",
    )
    pdb = kube.wait_for(
        lambda: kube.get("poddisruptionbudgets", ns, "f5tts"), message="no PDB again"
    )
    assert pdb["spec"]["maxUnavailable"] == 1


def test_the_cache_claim_grows_by_patch_and_a_shrink_is_a_condition_not_a_crash(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    setup(kube, ns)
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )

    def requested() -> str:
        pvc = kube.get("persistentvolumeclaims", ns, "f5tts-cache") or {}
        return str(pvc["spec"]["resources"]["requests"]["storage"])

    assert requested() == "20Gi"
    cache = {"credentialsSecret": {"name": "b2-credentials"}, "cache": {"size": "40Gi"}}
    kube.patch("ttsendpoints", ns, "f5tts", {"spec": {"storage": cache}})
    kube.wait_for(lambda: requested() == "40Gi", message="the claim never grew")

    cache["cache"]["size"] = "10Gi"
    kube.patch("ttsendpoints", ns, "f5tts", {"spec": {"storage": cache}})
    refused = kube.wait_for(
        lambda: (cd := cond(kube, ns, c.CACHE_CLAIM_SIZED)).get("status") == "False" and cd,
        message="the shrink was never reported",
    )
    assert refused["reason"] == c.REASON_CLAIM_SHRINK_REFUSED
    assert "cannot shrink" in refused["message"]
    assert requested() == "40Gi"
    assert status(kube, ns)["phase"] == "Ready", "the endpoint keeps serving"


def test_an_unfinished_cache_job_is_replaced_when_its_template_changes(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    held = {"nvidia.com/gpu.present": "true", HOLD_LABEL: "true"}
    setup(kube, ns, nodeSelector=held)
    old = one_cache_job(kube, ns)
    held_pod(kube, ns, old)
    kube.patch(
        "ttsendpoints",
        ns,
        "f5tts",
        {"spec": {"nodeSelector": {**held, "kubernetes.io/os": "linux"}}},
    )

    def replaced() -> Obj | None:
        for job in cache_jobs(kube, ns):
            selector = job["spec"]["template"]["spec"].get("nodeSelector", {})
            if job["metadata"]["uid"] != old["metadata"]["uid"] and "kubernetes.io/os" in selector:
                return job
        return None

    new = kube.wait_for(replaced, timeout=60, message="the cache Job was never replaced")
    assert new["metadata"]["name"] == old["metadata"]["name"], "same model, same cache key"
    finish_pod(kube, ns, held_pod(kube, ns, new), 0, json.dumps(SUMMARY))
    kube.wait_for(
        lambda: status(kube, ns).get("phase") == "Ready", timeout=60, message="never Ready"
    )


def test_cache_progress_shows_in_status_while_the_sync_runs(
    kube: Kube, ns: str, run_operator: RunOperator, control_plane: ClusterHandle
) -> None:
    """The sync's own progress line, read through pods/log (kwok serves the container log)."""
    if control_plane.plane is None:
        pytest.skip("needs the test control plane's kwok to serve the sync container's log")
    run_operator()
    setup(kube, ns, nodeSelector={"nvidia.com/gpu.present": "true", HOLD_LABEL: "true"})
    job = one_cache_job(kube, ns)
    pod = held_pod(kube, ns, job)
    total = 1_402_692_773
    progress = Progress("F5TTS_v1_Base", total, 0, io.StringIO())
    progress.add(total * 46 // 100)
    write_container_log(control_plane.plane.container_log("sync"), ["syncing", progress.line()])
    shown = kube.wait_for(
        lambda: status(kube, ns).get("cacheProgress"), message="no cacheProgress in status"
    )
    assert shown["percent"] == 46
    assert shown["bytesTotal"] == pytest.approx(total, rel=0.01)
    assert shown["bytesDone"] == pytest.approx(total * 0.46, rel=0.01)
    assert status(kube, ns)["phase"] == "Syncing"

    finish_pod(kube, ns, pod, 0, json.dumps(SUMMARY))
    kube.wait_for(
        lambda: (status(kube, ns).get("cacheProgress") or {}).get("percent") == 100,
        timeout=60,
        message="never 100 % once the cache was ready",
    )


def test_flash_attn_install_progress_shows_on_the_endpoint_then_the_sync_takes_over(
    kube: Kube, ns: str, run_operator: RunOperator, control_plane: ClusterHandle
) -> None:
    """The cache pod's install-flash-attn init container runs (kwok holds it there) and
    logs its download's progress line: the endpoint's FlashAttnReady says it; once the init
    container succeeded and the sync runs, flash_attn is installed and the cache syncs."""
    if control_plane.plane is None:
        pytest.skip("needs the test control plane's kwok to hold an init container and its log")
    run_operator()
    wheel = "s3://my-tts-bucket/wheels/flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    setup(
        kube,
        ns,
        nodeSelector={
            "nvidia.com/gpu.present": "true",
            HOLD_LABEL: "true",
            INIT_HOLD_LABEL: "true",
        },
        flashAttn={"enabled": True, "wheel": wheel},
    )
    job = one_cache_job(kube, ns)

    def installing() -> Obj | None:
        for pod in job_pods(kube, ns, job):
            inits = (pod.get("status") or {}).get("initContainerStatuses") or []
            if inits and "running" in inits[0]["state"]:
                return pod
        return None

    pod = kube.wait_for(installing, message="the install-flash-attn init container never ran")
    total = 254_123_456
    progress = Progress(wheel.rsplit("/", 1)[1], total, 0, io.StringIO(), verb="fetch")
    progress.add(total * 40 // 100)
    write_container_log(
        control_plane.plane.container_log(c.CONTAINER_INSTALL_FLASH_ATTN),
        [
            "this pod's flash_attn ABI: cu13torch2.11cxx11abiTRUE-cp311",
            f"fetching {wheel}",
            progress.line(),
        ],
    )
    flash = kube.wait_for(
        lambda: "(40%)" in (f := cond(kube, ns, c.FLASH_ATTN_READY)).get("message", "") and f,
        message="the download's progress never reached FlashAttnReady",
    )
    assert (flash["status"], flash["reason"]) == ("False", c.REASON_FLASH_ATTN_INSTALLING)
    assert flash["message"].startswith(
        "installing flash_attn into the cache: fetch flash_attn-2.8.3+cu13torch2.11"
    )
    assert cond(kube, ns, c.CACHE_READY)["message"] == "the cache Job is installing flash_attn"
    assert "cacheProgress" not in status(kube, ns), "the model's sync has not started"

    # What a kubelet writes when the init container exits 0 and the sync starts.
    now = pod["status"].get("startTime")
    init = pod["spec"]["initContainers"][0]
    sync = pod["spec"]["containers"][0]
    kube.patch_status(
        "pods",
        ns,
        pod["metadata"]["name"],
        {
            "phase": "Running",
            "initContainerStatuses": [
                {
                    "name": init["name"],
                    "image": init["image"],
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
            "containerStatuses": [
                {
                    "name": sync["name"],
                    "image": sync["image"],
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        },
    )
    flash = kube.wait_for(
        lambda: (f := cond(kube, ns, c.FLASH_ATTN_READY)).get("status") == "True" and f,
        message="flash_attn never reported installed once the sync ran",
    )
    assert flash["reason"] == c.REASON_FLASH_ATTN_INSTALLED
    assert cond(kube, ns, c.CACHE_READY)["message"] == "the cache Job is syncing the model"


def test_a_server_that_cannot_load_says_why_on_the_endpoint(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    """The server container keeps exiting (a flash_attn wheel that does not import on the GPU
    node): the endpoint says so, with serve's own message, instead of 0/1 replicas ready."""
    run_operator()
    wheel = "s3://my-tts-bucket/wheels/flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    setup(
        kube,
        ns,
        nodeSelector={"nvidia.com/gpu.present": "true", HOLD_LABEL: "true"},
        flashAttn={"enabled": True, "wheel": wheel},
    )
    finish_pod(kube, ns, held_pod(kube, ns, one_cache_job(kube, ns)), 0, json.dumps(SUMMARY))
    pod = kube.wait_for(
        lambda: next(
            (p for p in server_pods(kube, ns) if (p.get("status") or {}).get("phase") == "Running"),
            None,
        ),
        timeout=60,
        message="no running server pod",
    )
    server = next(ct for ct in pod["spec"]["containers"] if ct["name"] == "server")
    assert server["command"][server["command"].index("--attn-backend") + 1] == "flash_attn"
    why = (
        "serve failed: EngineError: attn_backend flash_attn asked for, but flash_attn is "
        "installed but does not import: ImportError: libcudart.so.13: cannot open shared object"
    )
    now = pod["status"].get("startTime")
    kube.patch_status(
        "pods",
        ns,
        pod["metadata"]["name"],
        {
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": "server",
                    "image": server["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 3,
                    "started": False,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": why,
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        },
    )
    available = kube.wait_for(
        lambda: (a := cond(kube, ns, c.AVAILABLE)).get("reason") == c.REASON_SERVER_FAILING and a,
        timeout=60,
        message="the endpoint never said its server is failing",
    )
    assert available["status"] == "False"
    assert why in available["message"]
    flash = cond(kube, ns, c.FLASH_ATTN_READY)
    assert (flash["status"], flash["reason"]) == ("False", c.REASON_FLASH_ATTN_FAILED)
    assert "does not import" in flash["message"]
