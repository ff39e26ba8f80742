"""A batch TTSJob's state from its Job and pods: parts done, the joined output, the failure."""

from __future__ import annotations

import json
from typing import Any

from tts_operator.handlers.job import batch_outcome

UID = "6a0c1f7e-0000-4000-8000-000000000001"


def _job(completions: int = 3, *, succeeded: int = 0, condition: str | None = None) -> Any:
    status: dict[str, Any] = {"succeeded": succeeded, "active": completions - succeeded}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": "X"}]
    return {
        "metadata": {"name": "chapter-one-run", "namespace": "tts", "uid": UID},
        "spec": {"completions": completions, "completionMode": "Indexed"},
        "status": status,
    }


def _pod(index: int, exit_code: int, message: Any, *, uid: str = UID) -> Any:
    text = message if isinstance(message, str) else json.dumps(message)
    return {
        "metadata": {
            "name": f"chapter-one-run-{index}-x",
            "labels": {
                "batch.kubernetes.io/job-name": "chapter-one-run",
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-completion-index": str(index),
            },
        },
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "initContainerStatuses": [
                {"name": "sync", "state": {"terminated": {"exitCode": 0, "message": ""}}}
            ],
            "containerStatuses": [
                {
                    "name": "run-job",
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": text,
                        }
                    },
                }
            ],
        },
    }


def _part(index: int) -> Any:
    return _pod(
        index,
        0,
        {"part": index, "parts": 3, "joined": False, "partUri": f"s3://b/outputs/parts/{index}"},
    )


JOINED = {
    "outputUri": "s3://b/outputs/tts/chapter-one.flac",
    "audioSeconds": 612.4,
    "rtf": 0.08,
    "chunks": 41,
    "part": 1,
    "parts": 3,
    "joined": True,
}


def test_while_parts_run_the_message_counts_the_parts_done() -> None:
    outcome = batch_outcome(_job(succeeded=1), [_part(0)])
    assert outcome.state == "running"
    assert "1/3 parts done" in outcome.message


def test_the_joining_pod_of_any_index_gives_the_output() -> None:
    pods = [_part(0), _pod(1, 0, JOINED), _part(2)]
    outcome = batch_outcome(_job(succeeded=3, condition="Complete"), pods)
    assert outcome.state == "succeeded"
    assert outcome.summary is not None
    assert outcome.summary["outputUri"] == JOINED["outputUri"]
    assert (outcome.summary["audioSeconds"], outcome.summary["rtf"]) == (612.4, 0.08)
    assert outcome.message == f"audio written to {JOINED['outputUri']}"


def test_a_permanent_input_error_is_the_reason_not_the_pods_it_stopped() -> None:
    pods = [
        _pod(0, 143, "Traceback (most recent call last):\nKeyboardInterrupt"),
        _pod(1, 2, {"message": "textFrom s3://b/texts/missing.txt does not exist"}),
        _pod(2, 143, "terminated"),
    ]
    outcome = batch_outcome(_job(condition="Failed"), pods)
    assert outcome.state == "failed"
    assert outcome.message == "textFrom s3://b/texts/missing.txt does not exist"


def test_a_failed_job_without_a_permanent_error_says_what_the_last_pod_said() -> None:
    outcome = batch_outcome(_job(condition="Failed"), [_pod(0, 1, "CUDA out of memory")])
    assert (outcome.state, outcome.message) == ("failed", "CUDA out of memory")


def test_a_completed_job_without_a_joined_output_is_not_called_a_success() -> None:
    outcome = batch_outcome(_job(succeeded=3, condition="Complete"), [_part(0), _part(1), _part(2)])
    assert outcome.state == "failed"
    assert "no pod reported the joined output" in outcome.message


def test_one_part_done_is_not_the_job_done() -> None:
    outcome = batch_outcome(_job(succeeded=1), [_part(0)])
    assert outcome.state == "running"


def test_pods_of_an_earlier_job_by_the_same_name_are_ignored() -> None:
    stale = _pod(1, 0, JOINED, uid="6a0c1f7e-0000-4000-8000-0000000000ff")
    outcome = batch_outcome(_job(), [stale])
    assert outcome.state == "running"
    assert "0/3 parts done" in outcome.message


def test_a_single_pod_job_reports_its_output() -> None:
    job = _job(1, succeeded=1, condition="Complete")
    job["spec"] = {"completions": 1}
    single = dict(JOINED, part=0, parts=1)
    outcome = batch_outcome(job, [_pod(0, 0, single)])
    assert outcome.state == "succeeded"
    assert outcome.summary is not None
    assert outcome.summary["outputUri"] == JOINED["outputUri"]


def test_a_job_past_its_deadline_says_so_not_how_its_stopped_pods_exited() -> None:
    job = _job(succeeded=1)
    job["status"]["conditions"] = [
        {
            "type": "Failed",
            "status": "True",
            "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline",
        }
    ]
    outcome = batch_outcome(job, [_part(0), _pod(1, 143, "terminated")])
    assert outcome.state == "failed"
    assert outcome.reason == "DeadlineExceeded"
    assert "Job was active longer than specified deadline" in outcome.message
    assert "spec.activeDeadlineSeconds" in outcome.message
