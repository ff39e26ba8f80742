"""A real Prometheus scrapes a real server and the operator's real metrics, under load.

Debian's prometheus runs with a generated config (1 s scrape and evaluation,
the server and an operator-metrics process as static targets, the chart's
rendered rules as its rule file). While a load of speech requests (some
invalid) and jobs (one succeeding, one failing per round) runs, every recording rule and every query
of every dashboard panel must return a sample that is a number (not NaN).
The dashboard JSON is parsed, so a new panel is covered without touching this
test; a panel that cannot have data here must be in ALLOWED_EMPTY, with why.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.conftest import BUCKET, MISSING_BUCKET, ImageServer
from tests.chart.helm import ALL_ON, ROOT, Obj, dashboards, recording_rules, render, rule_groups
from tests.support.prometheus import query as ask
from tests.support.prometheus import running_prometheus, service_monitor_scrape
from tests.support.s3 import free_port, wait_for_port
from tts_inference.metrics import ServerMetrics
from tts_operator.builders import objects as b

pytestmark = pytest.mark.slow

# Panel queries (title, refId) that cannot have data from a server and the operator alone, and why.
KUBELET_ONLY = (
    "kubelet_volume_stats_* come from the kubelet's volume stats: only a node serves them"
)
ALLOWED_EMPTY = {("Cache volume", "A"): KUBELET_ONLY, ("Cache volume", "B"): KUBELET_ONLY}
# How the test fills in the dashboard's variables (Grafana's "All" is .*).
VARIABLES = {"$__rate_interval": "5m", "${namespace}": ".*", "$namespace": ".*"}
# A Grafana variable left in a query; "$1" in label_replace is PromQL's, and Grafana leaves it.
UNKNOWN_VARIABLE = re.compile(r"\$(\{|[A-Za-z_])")
DEADLINE_S = 90


@dataclass(frozen=True)
class Query:
    where: str  # "record <name>" or "panel <title> <refId>"
    expr: str


def _panels(dashboard: Obj) -> Iterator[Obj]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: Obj) -> list[tuple[tuple[str, str], Query]]:
    """((panel title, refId), query) for every target of every panel, variables filled in."""
    out = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert not UNKNOWN_VARIABLE.search(expr), (
                f"panel {panel['title']!r} uses an unknown variable: {expr}"
            )
            where = f"panel {panel['title']!r} {target['refId']}"
            out.append(((panel["title"], target["refId"]), Query(where, expr)))
    return out


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    return render(ALL_ON)


@pytest.fixture(scope="module")
def operator_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    log = tmp_path_factory.mktemp("operator-metrics") / "stub.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chart.operator_metrics_stub", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def prometheus(
    rendered: list[Obj],
    image_server: ImageServer,
    operator_metrics: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    server_port = image_server.url.rsplit(":", 1)[1]
    scrapes = [
        {
            "job_name": "tts-server",
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{server_port}"],
                    "labels": {"namespace": "tts", "pod": "f5tts-5f7d9-x2kqp"},
                }
            ],
        },
        service_monitor_scrape(rendered, f"127.0.0.1:{operator_metrics}"),
    ]
    with running_prometheus(
        tmp_path_factory.mktemp("prometheus"), scrapes, {"groups": rule_groups(rendered)}
    ) as url:
        yield url


class Load:
    """Rounds of mixed traffic, back to back, until stopped."""

    TEXTS = ("Hello there.", "A short sentence to speak.", "Numbers: one, two, three.")
    FORMATS = ("wav", "mp3", "flac", "pcm")

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.jobs: dict[int, int] = {}
        self.errors: list[str] = []
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=120)

    def _speech(self, client: httpx.Client, i: int) -> int:
        body: dict[str, Any] = {
            "model": "tiny",
            "input": self.TEXTS[i % len(self.TEXTS)],
            "voice": "default",
            "response_format": self.FORMATS[i % len(self.FORMATS)],
        }
        return client.post(f"{self.url}/v1/audio/speech", json=body).status_code

    def _round(self, client: httpx.Client, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        n = self.rounds
        for bucket, name in ((BUCKET, "ok"), (MISSING_BUCKET, "fails")):
            r = client.post(
                f"{self.url}/v1/jobs",
                json={
                    "text": "A job in the load test.",
                    "output": {"uri": f"s3://{bucket}/load/{name}-{n}.wav"},
                },
            )
            self.jobs[r.status_code] = self.jobs.get(r.status_code, 0) + 1
        bad = client.post(
            f"{self.url}/v1/audio/speech", json={"model": "tiny", "input": "", "voice": "default"}
        )
        self.statuses[bad.status_code] = self.statuses.get(bad.status_code, 0) + 1
        # Twelve at once: whether some meet a full queue depends on timing, and no query
        # needs them to (the refused and dropped counters are exported from the start).
        for status in pool.map(lambda i: self._speech(client, i), range(n, n + 12)):
            self.statuses[status] = self.statuses.get(status, 0) + 1
        self.rounds += 1

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(12) as pool:
            while not self.stop.is_set():
                try:
                    self._round(client, pool)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))


def _has_number(result: list[Obj]) -> bool:
    return any(not math.isnan(float(s["value"][1])) for s in result)


def test_every_recording_rule_and_dashboard_query_returns_data(
    rendered: list[Obj], prometheus: str, image_server: ImageServer
) -> None:
    (dashboard,) = dashboards(rendered).values()
    queries = [Query(f"record {name}", name) for name in recording_rules(rendered)]
    allowed: list[Query] = []
    for key, query in panel_queries(dashboard):
        (allowed if key in ALLOWED_EMPTY else queries).append(query)
    assert set(ALLOWED_EMPTY) <= {key for key, _ in panel_queries(dashboard)}, (
        "stale ALLOWED_EMPTY entry"
    )

    pending = {q.where: q for q in queries}
    with Load(image_server.url) as load:
        deadline = time.monotonic() + DEADLINE_S
        while pending and time.monotonic() < deadline:
            for where, query in list(pending.items()):
                if _has_number(ask(prometheus, query.expr)):
                    del pending[where]
            if pending:
                time.sleep(0.5)  # polling Prometheus for data that needs more scrapes
    missing = {where: q.expr for where, q in pending.items()}
    assert not missing, (
        f"no data after {DEADLINE_S}s (load: {load.rounds} rounds, speech statuses {load.statuses}, "
        f"job submissions {load.jobs}, errors {load.errors[:3]}): {missing}"
    )
    assert load.statuses.get(200), load.statuses
    # The server's cache figures are per endpoint: the pod name less its two suffixes.
    for key, query in panel_queries(dashboard):
        if key[0] == "Cache volume" and key not in ALLOWED_EMPTY:
            labels = [sample["metric"] for sample in ask(prometheus, query.expr)]
            assert labels == [{"namespace": "tts", "server": "f5tts"}], (query.where, labels)
    for query in allowed:
        assert not ask(prometheus, query.expr), (
            f"{query.where} now has data: take it off ALLOWED_EMPTY"
        )
    targets = ask(prometheus, "up")
    assert {t["metric"]["job"] for t in targets if t["value"][1] == "1"} == {
        "tts-server",
        "tts-operator",
    }


def test_dashboard_panels_are_well_formed(rendered: list[Obj]) -> None:
    (dashboard,) = dashboards(rendered).values()
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert dashboard["uid"] == "tts-operator"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["title"], panel
        assert panel.get("description"), panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in _panels(dashboard))
    for topic in (
        "requests",
        "latency",
        "real-time factor",
        "queue depth",
        "batch size",
        "gpu memory",
        "cold start",
        "cache",
        "jobs by phase",
    ):
        assert topic in titles, f"no panel for {topic}"


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def _files_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _volume(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def test_the_server_reports_its_model_folder_and_cache_volume(
    image_server: ImageServer, tiny_model: Path
) -> None:
    """Without --cache-dir the volume is the model folder's (the server here runs without one)."""
    text = image_server.metrics()
    assert _samples(text, "tts_model_cache_bytes") == {(): _files_bytes(tiny_model)}
    volume = _samples(text, "tts_cache_volume_bytes")
    assert set(volume) == {(("kind", "used"),), (("kind", "capacity"),)}
    assert volume[(("kind", "capacity"),)] == _volume(tiny_model)[1]
    assert 0 < volume[(("kind", "used"),)] <= volume[(("kind", "capacity"),)]


def test_cache_metrics_resolve_the_model_link_and_read_the_cache_dir(tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny" / "d1g35t"
    (model / "vocos").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"w" * 1000)
    (model / "vocos" / "config.yaml").write_bytes(b"c" * 24)
    (model / "vocos" / "elsewhere").symlink_to(tmp_path / "models")  # not followed
    link = tmp_path / "run" / "model"
    link.parent.mkdir()
    link.symlink_to(model)

    metrics = ServerMetrics()
    text = generate_latest(metrics.registry).decode()
    assert _samples(text, "tts_cache_volume_bytes") == {}  # nothing before the load
    metrics.track_cache(link, tmp_path / "run")
    text = generate_latest(metrics.registry).decode()
    assert _samples(text, "tts_model_cache_bytes") == {(): 1024}
    capacity = _samples(text, "tts_cache_volume_bytes")[(("kind", "capacity"),)]
    assert capacity == _volume(tmp_path / "run")[1]

    # A folder that is gone is logged, not fatal; the volume is not exported while unreadable.
    gone = ServerMetrics()
    gone.track_cache(tmp_path / "missing", None)
    text = generate_latest(gone.registry).decode()
    assert _samples(text, "tts_model_cache_bytes") == {(): 0}
    assert _samples(text, "tts_cache_volume_bytes") == {}


def test_kedas_wake_up_query_finds_the_pending_ttsjobs_through_the_charts_service_monitor(
    rendered: list[Obj], prometheus: str
) -> None:
    """The pending-jobs trigger of an endpoint's ScaledObject, asked of a Prometheus that
    scrapes the operator as the chart's ServiceMonitor says: it sees the two TTSJobs the
    operator counts for endpoint tts/a (operator_metrics_stub.PENDING), so KEDA can wake a
    sleeping endpoint for them."""
    endpoint = {
        "apiVersion": "tts.f5tts.dev/v1alpha1",
        "kind": "TTSEndpoint",
        "metadata": {"name": "a", "namespace": "tts", "uid": "u-1"},
        "spec": {"autoscaling": {"minReplicas": 0, "maxReplicas": 2}},
    }
    scaled = b.scaled_object(endpoint, b.BuildConfig(prometheus_url=prometheus))
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["name"] == "pending-jobs"]
    deadline = time.monotonic() + 30
    result = ask(prometheus, trigger["metadata"]["query"])
    while not result and time.monotonic() < deadline:
        time.sleep(0.5)  # polling Prometheus until its first scrapes are in
        result = ask(prometheus, trigger["metadata"]["query"])
    assert [float(sample["value"][1]) for sample in result] == [2.0], result
