"""Batch TTSJobs in parts (an Indexed Job) under the real Kopf runtime on the real control plane.

The real Job controller runs the Indexed Job (backoffLimitPerIndex, podFailurePolicy);
the test plays only the kubelet: the pods are held Running by kwok (their nodeSelector
asks for it) until the test writes how their run-job container ended.
"""

from __future__ import annotations

import json
import os
from typing import Any

from prometheus_client import REGISTRY

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.operator.conftest import RunOperator
from tests.operator.test_flows import example, finish_pod, job_pods
from tests.support.cluster import EXIT_CODE_LABEL, HOLD_LABEL, Kube
from tts_operator import constants as c

PARTS = 3
OUTPUT = "s3://my-tts-bucket/outputs/default/chapter-one.flac"
JOINED = {
    "outputUri": OUTPUT,
    "audioSeconds": 612.4,
    "rtf": 0.081,
    "chunks": 41,
    "part": 2,
    "parts": PARTS,
    "joined": True,
}


def _part_done(index: int) -> dict[str, Any]:
    return {
        "part": index,
        "parts": PARTS,
        "joined": False,
        "partUri": f"s3://my-tts-bucket/outputs/default/.parts/chapter-one/{index}.flac",
    }


def _create_ttsjob(
    kube: Kube,
    ns: str,
    parallelism: int = PARTS,
    node_label: str = HOLD_LABEL,
    value: str = "true",
    **spec: Any,
) -> dict[str, Any]:
    job = example("chapter-one")
    job["spec"]["parallelism"] = parallelism
    job["spec"].update(spec)
    job["spec"]["nodeSelector"] = {node_label: value}
    return kube.create("ttsjobs", ns, job)


def _status(kube: Kube, ns: str) -> dict[str, Any]:
    return dict((kube.get("ttsjobs", ns, "chapter-one") or {}).get("status") or {})


def _batch_jobs(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return kube.list("jobs", ns, f"{c.LABEL_COMPONENT}={c.COMPONENT_JOB}")


def _one_batch_job(kube: Kube, ns: str) -> dict[str, Any]:
    jobs = kube.wait_for(lambda: _batch_jobs(kube, ns), message="no batch Job")
    assert len(jobs) == 1
    return jobs[0]


def _index_pod(kube: Kube, ns: str, job: dict[str, Any], index: int) -> dict[str, Any]:
    """The Running pod of completion index ``index`` (held by kwok for the test)."""
    indexed = job["spec"].get("completionMode") == "Indexed"

    def running() -> dict[str, Any] | None:
        for pod in job_pods(kube, ns, job):
            annotations = pod["metadata"].get("annotations") or {}
            if (
                not indexed
                or annotations.get("batch.kubernetes.io/job-completion-index") == str(index)
            ) and (pod.get("status") or {}).get("phase") == "Running":
                return pod
        return None

    return kube.wait_for(running, message=f"no running pod for index {index}")


def _part_ended(
    kube: Kube, ns: str, job: dict[str, Any], index: int, code: int, message: dict[str, Any]
) -> None:
    finish_pod(kube, ns, _index_pod(kube, ns, job, index), code, json.dumps(message))


def test_parts_run_as_one_indexed_job_and_the_joined_output_is_reported(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    ttsjob = _create_ttsjob(kube, ns)
    job = _one_batch_job(kube, ns)

    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (2, 0)
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TTSJob",
        "chapter-one",
        ttsjob["metadata"]["uid"],
        True,
    )
    run_job = spec["template"]["spec"]["containers"][0]
    assert run_job["command"][run_job["command"].index("--part-count") + 1] == "3"
    assert {r["action"] for r in spec["podFailurePolicy"]["rules"]} == {"FailJob", "Ignore"}

    kube.wait_for(lambda: _status(kube, ns).get("phase") == "Running", message="never Running")
    _part_ended(kube, ns, job, 0, 0, _part_done(0))
    kube.wait_for(
        lambda: "1/3 parts done" in _status(kube, ns).get("message", ""),
        message="the message never counted the parts done",
    )
    assert _status(kube, ns)["phase"] == "Running"

    _part_ended(kube, ns, job, 1, 0, _part_done(1))
    _part_ended(kube, ns, job, 2, 0, JOINED)  # the last part to finish finds all and joins
    status = kube.wait_for(
        lambda: (st := _status(kube, ns)).get("phase") == "Succeeded" and st,
        timeout=60,
        message="never Succeeded",
    )
    assert status["outputUri"] == OUTPUT
    assert (status["audioSeconds"], status["rtf"]) == (612.4, 0.081)
    assert status["message"] == f"audio written to {OUTPUT}"
    assert status["completedAt"]
    assert len(_batch_jobs(kube, ns)) == 1


def test_a_part_rejecting_its_input_fails_the_ttsjob_at_once_with_that_message(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    _create_ttsjob(kube, ns)
    job = _one_batch_job(kube, ns)
    reason = "textFrom s3://my-tts-bucket/texts/chapter-one.txt: no such key"
    _part_ended(kube, ns, job, 1, 2, {"part": 1, "parts": PARTS, "message": reason})
    # The Job controller applies FailJob: the Job fails, no index is retried.
    failed_job = kube.wait_for(
        lambda: next(
            (
                cd
                for cd in (kube.get("jobs", ns, job["metadata"]["name"]) or {})
                .get("status", {})
                .get("conditions", [])
                if cd["type"] == "Failed" and cd["status"] == "True"
            ),
            None,
        ),
        timeout=30,
        message="the Job never failed",
    )
    assert failed_job["reason"] == "PodFailurePolicy"
    status = kube.wait_for(
        lambda: (st := _status(kube, ns)).get("phase") == "Failed" and st,
        message="never Failed",
    )
    assert status["message"] == reason
    assert status.get("outputUri") is None
    failed = {cond["type"]: cond for cond in status["conditions"]}["Failed"]
    assert (failed["status"], failed["message"]) == ("True", reason)


def test_a_pod_exiting_with_code_2_fails_the_indexed_job_without_retries(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    """kwok ends every pod of this job with exit code 2 (its nodeSelector asks for it)."""
    run_operator()
    _create_ttsjob(kube, ns, node_label=EXIT_CODE_LABEL, value="2")
    job = _one_batch_job(kube, ns)
    kube.wait_for(
        lambda: _status(kube, ns).get("phase") == "Failed", timeout=30, message="never Failed"
    )
    final = kube.get("jobs", ns, job["metadata"]["name"]) or {}
    reasons = {cd["type"]: cd.get("reason") for cd in final["status"]["conditions"]}
    assert reasons["Failed"] == "PodFailurePolicy"
    assert int(final["status"].get("failed") or 0) <= PARTS, "a part was retried"


def test_a_batch_job_past_its_deadline_is_stopped_by_the_job_controller_and_says_so(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    """The pods are held Running for ever; the Job controller's clock ends the Job."""
    run_operator()
    _create_ttsjob(kube, ns, activeDeadlineSeconds=2)
    job = _one_batch_job(kube, ns)
    assert job["spec"]["activeDeadlineSeconds"] == 2
    status = kube.wait_for(
        lambda: (st := _status(kube, ns)).get("phase") == "Failed" and st,
        timeout=60,
        message="never Failed",
    )
    failed = {cond["type"]: cond for cond in status["conditions"]}["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")
    assert "spec.activeDeadlineSeconds" in status["message"]
    final = kube.get("jobs", ns, job["metadata"]["name"]) or {}
    reasons = {cd["type"]: cd.get("reason") for cd in final["status"]["conditions"]}
    assert reasons["Failed"] == "DeadlineExceeded"


def test_an_operator_restart_midway_still_makes_one_job(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    runner = run_operator()
    _create_ttsjob(kube, ns)
    job = _one_batch_job(kube, ns)
    kube.wait_for(lambda: _status(kube, ns).get("phase") == "Running", message="never Running")
    runner.stop()
    _part_ended(kube, ns, job, 0, 0, _part_done(0))
    runner.start()
    kube.wait_for(
        lambda: "1/3 parts done" in _status(kube, ns).get("message", ""),
        message="the restarted operator never caught up",
    )
    _part_ended(kube, ns, job, 2, 0, _part_done(2))
    _part_ended(kube, ns, job, 1, 0, dict(JOINED, part=1))
    kube.wait_for(
        lambda: _status(kube, ns).get("phase") == "Succeeded", timeout=60, message="never Succeeded"
    )
    assert len(_batch_jobs(kube, ns)) == 1
    assert _batch_jobs(kube, ns)[0]["metadata"]["uid"] == job["metadata"]["uid"]


def _counted(phase: str) -> float:
    value = REGISTRY.get_sample_value("tts_operator_resources", {"kind": "TTSJob", "phase": phase})
    return value or 0.0


def test_a_deleted_ttsjob_no_longer_counts_in_the_resources_gauge(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    before = _counted("Succeeded")
    run_operator()
    _create_ttsjob(kube, ns, parallelism=1)
    job = _one_batch_job(kube, ns)
    assert job["spec"].get("completionMode", "NonIndexed") == "NonIndexed"
    _part_ended(kube, ns, job, 0, 0, dict(JOINED, part=0, parts=1))
    kube.wait_for(
        lambda: _status(kube, ns).get("phase") == "Succeeded", timeout=60, message="never Succeeded"
    )
    kube.wait_for(lambda: _counted("Succeeded") == before + 1, message="never counted")
    kube.delete("ttsjobs", ns, "chapter-one")
    kube.wait_gone("ttsjobs", ns, "chapter-one")
    kube.wait_for(
        lambda: _counted("Succeeded") == before, message="the deleted TTSJob still counts"
    )


def test_parts_sharing_a_read_write_once_claim_are_kept_on_one_node(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    kube.create(
        "persistentvolumeclaims",
        ns,
        {
            "metadata": {"name": "shared-cache"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    )
    run_operator()
    job = example("chapter-one")
    job["spec"]["parallelism"] = PARTS
    job["spec"]["nodeSelector"] = {HOLD_LABEL: "true"}
    job["spec"]["storage"]["cache"] = {"existingClaim": "shared-cache"}
    kube.create("ttsjobs", ns, job)
    batch = _one_batch_job(kube, ns)
    pod = batch["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert {"claimName": "shared-cache"} in [v.get("persistentVolumeClaim") for v in pod["volumes"]]
    # The scheduler keeps every part on the node of the first.
    nodes = {_index_pod(kube, ns, batch, i)["spec"]["nodeName"] for i in range(PARTS)}
    assert len(nodes) == 1, nodes


def test_parts_without_an_existing_claim_share_one_made_for_the_job(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    run_operator()
    ttsjob = _create_ttsjob(kube, ns)
    batch = _one_batch_job(kube, ns)
    claim = kube.wait_for(
        lambda: kube.get("persistentvolumeclaims", ns, "chapter-one-cache"), message="no claim"
    )
    assert claim["metadata"]["ownerReferences"][0]["uid"] == ttsjob["metadata"]["uid"]
    pods = [_index_pod(kube, ns, batch, i) for i in range(PARTS)]
    for pod in pods:
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "cache"]
        assert volume["persistentVolumeClaim"]["claimName"] == "chapter-one-cache"
    assert len({pod["spec"]["nodeName"] for pod in pods}) == 1, "ReadWriteOnce: one node"
    kube.delete("ttsjobs", ns, "chapter-one")
    kube.wait_gone("persistentvolumeclaims", ns, "chapter-one-cache", timeout=180)
