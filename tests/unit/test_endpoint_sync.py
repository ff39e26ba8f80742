"""The pure parts of syncing an endpoint's children."""

from __future__ import annotations

import io
from typing import Any

from tts_inference.storage.progress import Progress
from tts_operator import constants as c
from tts_operator.builders.meta import parse_quantity
from tts_operator.handlers.endpoint import claim_resize, covers, deployment_patch, sync_progress


def test_covers_ignores_what_the_server_adds_and_sees_what_differs() -> None:
    want = {"spec": {"ports": [{"name": "http", "port": 8000}], "type": "ClusterIP"}}
    have = {
        "spec": {
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
        }
    }
    assert covers(have, want)
    assert not covers({"spec": {**have["spec"], "ports": [{"name": "http", "port": 9}]}}, want)
    assert not covers({"spec": {"ports": [], "type": "ClusterIP"}}, want)
    assert not covers({}, want)


def deployment(replicas: int, digest: str = "a") -> dict[str, Any]:
    return {
        "metadata": {"annotations": {c.ANNOTATION_SPEC_HASH: digest}},
        "spec": {"replicas": replicas, "template": {}},
    }


def test_the_spec_sets_replicas_until_an_autoscaler_owns_them() -> None:
    assert deployment_patch(deployment(0), deployment(2), autoscaled=False) is not None
    assert deployment_patch(deployment(2), deployment(2), autoscaled=False) is None
    # The autoscaler's count stands, zero included; a template change still rolls out.
    assert deployment_patch(deployment(0), deployment(2), autoscaled=True) is None
    assert deployment_patch(deployment(5), deployment(2), autoscaled=True) is None
    patch = deployment_patch(deployment(5), deployment(2, "b"), autoscaled=True)
    assert patch is not None
    assert "replicas" not in patch["spec"]


def test_claim_sizes_compare_as_quantities() -> None:
    assert claim_resize("20Gi", "20Gi") is None
    assert claim_resize("21474836480", "20Gi") is None
    assert claim_resize("40Gi", "20Gi") == "grow"
    assert claim_resize("10Gi", "20Gi") == "shrink"
    assert claim_resize("1Ti", "1000G") == "grow"
    assert parse_quantity("1.5Gi") == 1.5 * 2**30
    assert parse_quantity("500M") == 500e6


def test_the_syncs_own_progress_line_parses_into_status_figures() -> None:
    progress = Progress("F5TTS_v1_Base", 2 * 2**30, 0, io.StringIO())
    progress.add(2**30)
    figures = sync_progress(f"waiting\n{progress.line()}\nnoise")
    assert figures is not None
    assert figures["percent"] == 50
    assert (figures["bytesDone"], figures["bytesTotal"]) == (2**30, 2 * 2**30)
    assert figures["bytesPerSecond"] > 0
    assert figures["etaSeconds"] is not None
    assert sync_progress("no progress here") is None
    eta_unknown = sync_progress("sync m: 0 B / 1.0 GiB (0%) 0 B/s ETA ?")
    assert eta_unknown is not None
    assert eta_unknown["etaSeconds"] is None


class Recorder:
    """The few Kube calls sync_children makes, in memory, each one recorded."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str, str]] = []

    async def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        return self.objects.get((kind, name))

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = obj
        return obj

    async def patch(self, kind: str, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", kind, name))
        return body

    async def list(self, kind: str, ns: str, selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, selector))
        return []

    async def delete(self, kind: str, ns: str, name: str) -> None:
        self.calls.append(("delete", kind, name))


def test_a_child_this_pass_already_read_is_not_read_again() -> None:
    import asyncio

    from tts_operator.handlers.endpoint import sync_children

    endpoint = {"kind": "TTSEndpoint", "metadata": {"name": "ep", "namespace": "ns", "uid": "u"}}
    meta = {"name": "ep", "labels": {}, "ownerReferences": []}
    scaler = {"kind": "HorizontalPodAutoscaler", "metadata": meta, "spec": {"maxReplicas": 4}}
    stale = {**scaler, "spec": {"maxReplicas": 2}}
    kube = Recorder({("HorizontalPodAutoscaler", "ep"): stale})
    known = {("HorizontalPodAutoscaler", "ep"): stale}
    asyncio.run(sync_children(kube, endpoint, [scaler], [], known))  # type: ignore[arg-type]
    assert kube.calls == [("patch", "HorizontalPodAutoscaler", "ep")]
    kube.calls.clear()
    asyncio.run(sync_children(kube, endpoint, [scaler], []))  # type: ignore[arg-type]
    assert kube.calls[0] == ("get", "HorizontalPodAutoscaler", "ep")


def server_pod(exit_code: int, message: str, finished: str = "2026-12-06T10:00:00Z") -> Any:
    term = {"exitCode": exit_code, "message": message, "finishedAt": finished, "reason": "Error"}
    return {
        "status": {
            "containerStatuses": [
                {
                    "name": "server",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": term},
                },
            ]
        }
    }


def test_a_server_that_keeps_exiting_says_why() -> None:
    from tts_operator.handlers.endpoint import server_failure

    assert server_failure([]) is None
    assert server_failure([server_pod(0, "")]) is None
    old = server_pod(1, "serve failed: old", "2026-12-06T09:00:00Z")
    new = server_pod(1, "serve failed: EngineError: no vocab.txt", "2026-12-06T10:00:00Z")
    assert server_failure([old, new]) == (
        "the server exits with code 1: serve failed: EngineError: no vocab.txt"
    )


def test_a_flash_attn_the_server_cannot_import_is_a_reason_on_the_endpoint() -> None:
    from datetime import UTC, datetime

    from tts_operator.handlers.endpoint import JobState, endpoint_status

    endpoint = {
        "metadata": {"name": "ep", "generation": 3},
        "spec": {"replicas": 1, "flashAttn": {"enabled": True, "wheel": "s3://b/w.whl"}},
    }
    failing = (
        "the server exits with code 1: serve failed: EngineError: attn_backend flash_attn "
        "asked for, but flash_attn is installed but does not import: ImportError: libcudart"
    )
    deployment = {"spec": {"replicas": 1}, "status": {"readyReplicas": 0}}
    cache = JobState("succeeded", "cache synced", None)
    now = datetime(2026, 12, 6, tzinfo=UTC)
    status = endpoint_status(endpoint, cache, deployment, "http://ep", now, None, failing)
    conds = {cond["type"]: cond for cond in status["conditions"]}
    assert conds[c.FLASH_ATTN_READY]["status"] == "False"
    assert conds[c.FLASH_ATTN_READY]["reason"] == c.REASON_FLASH_ATTN_FAILED
    assert "does not import" in conds[c.FLASH_ATTN_READY]["message"]
    assert conds[c.AVAILABLE]["reason"] == c.REASON_SERVER_FAILING
    assert "vocab" not in conds[c.AVAILABLE]["message"]
    healthy = endpoint_status(endpoint, cache, deployment, "http://ep", now, None, None)
    assert {cond["type"]: cond for cond in healthy["conditions"]}[c.AVAILABLE]["reason"] == (
        c.REASON_REPLICAS_NOT_READY
    )
