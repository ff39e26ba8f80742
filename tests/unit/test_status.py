"""Conditions and the pure status logic, with a fixed clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tts_operator import constants as c
from tts_operator import status as st
from tts_operator.handlers.endpoint import JobState, endpoint_status, job_state
from tts_operator.handlers.job import expired, idempotency_key, server_body

T0 = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_last_transition_time_changes_only_when_status_changes() -> None:
    conds = st.set_condition([], "CacheReady", False, "CacheSyncing", "syncing", 1, T0)
    again = st.set_condition(conds, "CacheReady", False, "CacheSyncing", "still syncing", 2, T1)
    assert again[0]["lastTransitionTime"] == "2026-11-23T12:00:00Z"
    assert again[0]["message"] == "still syncing"
    assert again[0]["observedGeneration"] == 2
    flipped = st.set_condition(again, "CacheReady", True, "CacheSynced", "done", 2, T1)
    assert flipped[0]["lastTransitionTime"] == "2026-11-23T12:05:00Z"


def test_set_condition_keeps_other_types_and_does_not_mutate() -> None:
    conds = st.set_condition([], "A", True, "R", "m", 1, T0)
    conds = st.set_condition(conds, "B", False, "R", "m", 1, T0)
    before = json.dumps(conds)
    out = st.set_condition(conds, "A", False, "R2", "m2", 2, T1)
    assert json.dumps(conds) == before
    assert [c_["type"] for c_ in out] == ["A", "B"]
    assert st.is_true(out, "A") is False


def _job(conditions: list[str], succeeded: int = 0) -> dict[str, Any]:
    return {
        "status": {
            "succeeded": succeeded,
            "conditions": [
                {"type": t, "status": "True", "message": f"{t} msg"} for t in conditions
            ],
        }
    }


def _pod(name: str, exit_code: int, message: str, init: bool = False) -> dict[str, Any]:
    cs = {
        "name": name,
        "state": {
            "terminated": {
                "exitCode": exit_code,
                "message": message,
                "reason": "Error" if exit_code else "Completed",
            }
        },
    }
    key = "initContainerStatuses" if init else "containerStatuses"
    return {"status": {key: [cs]}}


SUMMARY = {"event": "sync-complete", "digest": "ab" * 32, "bytesDownloaded": 1234, "seconds": 2.5}


def test_job_state_reads_the_termination_message() -> None:
    done = job_state(_job(["Complete"], 1), [_pod("sync", 0, json.dumps(SUMMARY))])
    assert done == JobState("succeeded", "cache synced", SUMMARY)
    gone = job_state(_job(["Complete"], 1), [])
    assert gone is not None
    assert gone.state == "succeeded", "a completed Job is ready even when its pod is gone"
    assert gone.summary is None
    failed = job_state(
        _job(["Failed"]),
        [
            _pod(
                "sync",
                1,
                json.dumps(
                    {
                        "event": "sync-failed",
                        "message": "sync failed: 403 AccessDenied on s3://b/models/x/v1/manifest.json",
                    }
                ),
            )
        ],
    )
    assert failed is not None
    assert failed.state == "failed"
    assert "403 AccessDenied on s3://b/models/x/v1/manifest.json" in failed.message
    flash = job_state(
        _job(["Failed"]), [_pod("install-flash-attn", 1, "error: wheel does not fit", init=True)]
    )
    assert flash is not None
    assert flash.failed_container == "install-flash-attn"
    assert job_state(_job([]), []) == JobState("running", "syncing", None, None)
    assert job_state(None, []) is None


def _endpoint(
    replicas: int = 1, flash: bool = False, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "model": {"name": "m", "source": "s3://b/models/m/v1/"},
        "storage": {"credentialsSecret": {"name": "s"}},
    }
    if flash:
        spec["flashAttn"] = {"enabled": True, "wheel": "s3://b/w.whl"}
    return {
        "metadata": {"name": "e", "namespace": "ns", "generation": 4},
        "spec": spec,
        "status": status or {},
    }


def _dep(ready: int) -> dict[str, Any]:
    return {"status": {"readyReplicas": ready}}


@pytest.mark.parametrize(
    ("cache", "replicas", "ready", "phase", "conditions"),
    [
        (None, 1, 0, "Syncing", {"CacheReady": "False", "Available": "False"}),
        (JobState("running"), 1, 0, "Syncing", {"CacheReady": "False", "Available": "False"}),
        (
            JobState("failed", "sync failed: 403 AccessDenied on s3://b/k"),
            1,
            0,
            "Failed",
            {"CacheReady": "False"},
        ),
        (
            JobState("succeeded", summary=SUMMARY),
            2,
            0,
            "Pending",
            {"CacheReady": "True", "Available": "False"},
        ),
        (JobState("succeeded", summary=SUMMARY), 2, 1, "Degraded", {"Available": "True"}),
        (
            JobState("succeeded", summary=SUMMARY),
            2,
            2,
            "Ready",
            {"Available": "True", "FlashAttnReady": "True"},
        ),
        (JobState("succeeded"), 0, 0, "Ready", {"Available": "False"}),
    ],
)
def test_endpoint_status_table(
    cache: JobState | None, replicas: int, ready: int, phase: str, conditions: dict[str, str]
) -> None:
    out = endpoint_status(_endpoint(replicas), cache, _dep(ready), "http://e.ns.svc:8000", T0)
    assert out["phase"] == phase
    got = {cond["type"]: cond["status"] for cond in out["conditions"]}
    assert conditions.items() <= got.items()
    assert out["observedGeneration"] == 4
    assert all(cond["observedGeneration"] == 4 for cond in out["conditions"])
    assert {cond["type"] for cond in out["conditions"]} == {
        c.CACHE_READY,
        c.FLASH_ATTN_READY,
        c.AVAILABLE,
    }


def test_failed_sync_reason_reaches_the_condition_message() -> None:
    out = endpoint_status(
        _endpoint(), JobState("failed", "sync failed: 403 AccessDenied on s3://b/k"), None, "u", T0
    )
    cache = st.get_condition(out["conditions"], c.CACHE_READY)
    assert cache is not None
    assert cache["reason"] == c.REASON_CACHE_FAILED
    assert cache["message"] == "sync failed: 403 AccessDenied on s3://b/k"


def test_cache_figures_reach_status() -> None:
    out = endpoint_status(_endpoint(), JobState("succeeded", summary=SUMMARY), _dep(1), "u", T0)
    assert out["modelDigest"] == SUMMARY["digest"]
    assert out["cacheBytes"] == 1234
    assert out["cacheSeconds"] == 2.5


def test_a_second_pass_keeps_transition_times() -> None:
    first = endpoint_status(_endpoint(), JobState("succeeded"), _dep(1), "u", T0)
    second = endpoint_status(_endpoint(status=first), JobState("succeeded"), _dep(1), "u", T1)
    assert first["conditions"] == second["conditions"]


def test_flash_attn_failure_is_its_own_condition() -> None:
    out = endpoint_status(
        _endpoint(flash=True),
        JobState("failed", "wheel does not fit", failed_container="install-flash-attn"),
        None,
        "u",
        T0,
    )
    flash = st.get_condition(out["conditions"], c.FLASH_ATTN_READY)
    assert flash is not None
    assert flash["status"] == "False"
    assert flash["reason"] == c.REASON_FLASH_ATTN_FAILED


def _ttsjob(**spec: Any) -> dict[str, Any]:
    base = {
        "endpointRef": {"name": "e"},
        "text": "Hello.",
        "output": {"uri": "s3://b/out/x.wav", "format": "wav"},
    }
    return {
        "metadata": {"name": "j", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {**base, **spec},
    }


def test_server_body_maps_the_spec() -> None:
    body = server_body(
        _ttsjob(voice={"name": "narrator"}, params={"nfeStep": 16, "seed": 3, "speed": 1.2})
    )
    assert body == {
        "output": {"uri": "s3://b/out/x.wav", "format": "wav"},
        "text": "Hello.",
        "voice": "narrator",
        "params": {"nfeStep": 16, "seed": 3, "speed": 1.2},
    }
    from_uri = server_body(
        {**_ttsjob(), "spec": {**_ttsjob()["spec"], "textFrom": "s3://b/t.txt", "text": None}}
    )
    assert from_uri["textUri"] == "s3://b/t.txt"


def test_idempotency_key_is_the_uid_then_per_attempt() -> None:
    job = _ttsjob()
    assert idempotency_key(job, 1) == "uid-1"
    assert idempotency_key(job, 2) == "uid-1-2"


def test_ttl_after_finished() -> None:
    job = _ttsjob(ttlSecondsAfterFinished=60)
    job["status"] = {"completedAt": "2026-11-23T12:00:00Z"}
    assert not expired(job, T0 + timedelta(seconds=59))
    assert expired(job, T0 + timedelta(seconds=60))
    assert not expired(_ttsjob(), T1)
