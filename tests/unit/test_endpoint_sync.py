"""The pure parts of syncing an endpoint's children."""

from __future__ import annotations

import io
from typing import Any

from tts_inference.cache.sync import Progress
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
