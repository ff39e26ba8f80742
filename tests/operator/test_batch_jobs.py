"""Batch TTSJobs in parts (an Indexed Job) under the real Kopf runtime against the emulator.

The test plays the Job controller and the kubelet: it creates the pods a Job would
(labelled with the job name and completion index, terminated with the message
run-job writes) and sets the Job's status as the controller would.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import REGISTRY

from tests.operator.conftest import NAMESPACE, RunOperator, WaitFor
from tests.operator.test_flows import _example, _start
from tests.support.kube_emulator import ApiServer, now_rfc3339
from tts_operator import constants as c
from tts_operator.builders.meta import owner_reference

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


def _create_ttsjob(api: ApiServer, parallelism: int = PARTS) -> dict[str, Any]:
    job = _example("chapter-one")
    job["spec"]["parallelism"] = parallelism
    return api.create("ttsjobs", NAMESPACE, job)


def _ttsjob(api: ApiServer) -> dict[str, Any]:
    return api.get("ttsjobs", NAMESPACE, "chapter-one") or {}


def _status(api: ApiServer) -> dict[str, Any]:
    return _ttsjob(api).get("status") or {}


def _batch_jobs(api: ApiServer) -> list[dict[str, Any]]:
    return [
        j
        for j in api.objects("jobs", NAMESPACE)
        if j["metadata"]["labels"].get(c.LABEL_COMPONENT) == c.COMPONENT_JOB
    ]


def _one_batch_job(api: ApiServer, wait_for: WaitFor) -> dict[str, Any]:
    jobs = wait_for(lambda: _batch_jobs(api) or None, message="no batch Job")
    assert len(jobs) == 1
    return dict(jobs[0])


def _pod_ended(
    api: ApiServer, job: dict[str, Any], index: int, exit_code: int, message: dict[str, Any] | str
) -> dict[str, Any]:
    """Play the kubelet: the pod of ``index`` ran and its run-job container ended."""
    meta, template = job["metadata"], job["spec"]["template"]
    labels = dict(template["metadata"]["labels"])
    labels["batch.kubernetes.io/job-completion-index"] = str(index)
    pod = api.create(
        "pods",
        NAMESPACE,
        {
            "metadata": {
                "generateName": f"{meta['name']}-{index}-",
                "labels": labels,
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                "ownerReferences": [owner_reference(job)],
            },
            "spec": template["spec"],
        },
    )
    now = now_rfc3339()

    def ended(name: str, code: int, text: str) -> dict[str, Any]:
        return {
            "name": name,
            "image": "registry.example/inference:1",
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "message": text,
                    "startedAt": now,
                    "finishedAt": now,
                }
            },
        }

    text = message if isinstance(message, str) else json.dumps(message)
    return api.patch_status(
        "pods",
        NAMESPACE,
        pod["metadata"]["name"],
        {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": now,
            "initContainerStatuses": [ended("sync", 0, "")],
            "containerStatuses": [ended("run-job", exit_code, text)],
        },
    )


def _job_progress(
    api: ApiServer, job: dict[str, Any], succeeded: int, *, condition: dict[str, Any] | None = None
) -> None:
    """Play the Job controller: ``succeeded`` indexes done, and a final condition if given."""
    now = now_rfc3339()
    status: dict[str, Any] = {
        "startTime": now,
        "active": 0 if condition else PARTS - succeeded,
        "succeeded": succeeded,
        "completedIndexes": f"0-{succeeded - 1}" if succeeded > 1 else ("0" if succeeded else None),
        "uncountedTerminatedPods": {},
    }
    if condition:
        status["conditions"] = [
            {
                **condition,
                "type": t,
                "status": "True",
                "lastProbeTime": now,
                "lastTransitionTime": now,
            }
            for t in (
                ("SuccessCriteriaMet", "Complete")
                if condition["reason"] == "CompletionsReached"
                else ("FailureTarget", "Failed")
            )
        ]
    api.patch_status("jobs", NAMESPACE, job["metadata"]["name"], status)


COMPLETE = {"reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"}


def test_parts_run_as_one_indexed_job_and_the_joined_output_is_reported(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    ttsjob = _create_ttsjob(api)
    job = _one_batch_job(api, wait_for)

    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
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

    wait_for(lambda: _status(api).get("phase") == "Running", message="never Running")
    _pod_ended(api, job, 0, 0, _part_done(0))
    _job_progress(api, job, 1)
    wait_for(
        lambda: "1/3 parts done" in _status(api).get("message", ""),
        message="the message never counted the parts done",
    )
    assert _status(api)["phase"] == "Running"

    _pod_ended(api, job, 1, 0, _part_done(1))
    _pod_ended(api, job, 2, 0, JOINED)  # the last part to finish finds all parts and joins
    _job_progress(api, job, 3, condition=COMPLETE)
    status = wait_for(
        lambda: _status(api) if _status(api).get("phase") == "Succeeded" else None,
        message="never Succeeded",
    )
    assert status["outputUri"] == OUTPUT
    assert (status["audioSeconds"], status["rtf"]) == (612.4, 0.081)
    assert status["message"] == f"audio written to {OUTPUT}"
    assert status["completedAt"]
    assert len(_batch_jobs(api)) == 1


def test_a_part_rejecting_its_input_fails_the_ttsjob_with_that_message(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    _create_ttsjob(api)
    job = _one_batch_job(api, wait_for)
    reason = "textFrom s3://my-tts-bucket/texts/chapter-one.txt: no such key"
    _pod_ended(api, job, 1, 2, {"part": 1, "parts": PARTS, "message": reason})
    # FailJob stops the other parts; their containers end with SIGTERM.
    _pod_ended(api, job, 0, 143, "Terminated\n")
    _pod_ended(api, job, 2, 143, "Terminated\n")
    _job_progress(
        api,
        job,
        0,
        condition={
            "reason": "PodFailurePolicy",
            "message": "Container run-job for pod tts-test/chapter-one-run-1-x failed with exit code 2 matching FailJob rule at index 0",
        },
    )
    status = wait_for(
        lambda: _status(api) if _status(api).get("phase") == "Failed" else None,
        message="never Failed",
    )
    assert status["message"] == reason
    assert "outputUri" not in status or status["outputUri"] is None
    failed = {cond["type"]: cond for cond in status["conditions"]}["Failed"]
    assert (failed["status"], failed["message"]) == ("True", reason)


def test_an_operator_restart_midway_still_makes_one_job(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    runner = _start(run_operator)
    _create_ttsjob(api)
    job = _one_batch_job(api, wait_for)
    wait_for(lambda: _status(api).get("phase") == "Running", message="never Running")
    runner.stop()
    _pod_ended(api, job, 0, 0, _part_done(0))
    _job_progress(api, job, 1)
    runner.start()
    wait_for(
        lambda: "1/3 parts done" in _status(api).get("message", ""),
        message="the restarted operator never caught up",
    )
    _pod_ended(api, job, 2, 0, _part_done(2))
    _pod_ended(api, job, 1, 0, dict(JOINED, part=1))
    _job_progress(api, job, 3, condition=COMPLETE)
    wait_for(lambda: _status(api).get("phase") == "Succeeded", message="never Succeeded")
    assert len(_batch_jobs(api)) == 1
    assert _batch_jobs(api)[0]["metadata"]["uid"] == job["metadata"]["uid"]


def _counted(phase: str) -> float:
    value = REGISTRY.get_sample_value("tts_operator_resources", {"kind": "TTSJob", "phase": phase})
    return value or 0.0


def test_a_deleted_ttsjob_no_longer_counts_in_the_resources_gauge(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    _start(run_operator)
    _create_ttsjob(api, parallelism=1)
    job = _one_batch_job(api, wait_for)
    assert "completionMode" not in job["spec"] or job["spec"]["completionMode"] == "NonIndexed"
    _pod_ended(api, job, 0, 0, dict(JOINED, part=0, parts=1))
    _job_progress(api, job, 1, condition=COMPLETE)
    wait_for(lambda: _status(api).get("phase") == "Succeeded", message="never Succeeded")
    counted = wait_for(lambda: _counted("Succeeded") or None, message="never counted")
    api.delete("ttsjobs", NAMESPACE, "chapter-one")
    wait_for(lambda: api.get("ttsjobs", NAMESPACE, "chapter-one") is None, message="not deleted")
    wait_for(
        lambda: _counted("Succeeded") == counted - 1,
        message="the deleted TTSJob still counts",
    )


def test_parts_sharing_a_read_write_once_claim_are_kept_on_one_node(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    api.create(
        "persistentvolumeclaims",
        NAMESPACE,
        {
            "metadata": {"name": "shared-cache"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    )
    _start(run_operator)
    job = _example("chapter-one")
    job["spec"]["parallelism"] = PARTS
    job["spec"]["storage"]["cache"] = {"existingClaim": "shared-cache"}
    api.create("ttsjobs", NAMESPACE, job)
    pod = _one_batch_job(api, wait_for)["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert {"claimName": "shared-cache"} in [v.get("persistentVolumeClaim") for v in pod["volumes"]]
