"""Debian's real Prometheus, started on 127.0.0.1 with a generated config."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import require_tool
from tests.support.process import stop_process, wait_for_http
from tests.support.s3 import free_port


@contextlib.contextmanager
def running_prometheus(
    folder: Path, scrape_configs: list[dict[str, Any]], rules: dict[str, Any] | None = None
) -> Iterator[str]:
    """Prometheus scraping ``scrape_configs`` every second (with ``rules`` as its rule file);
    yields its URL once /-/ready answers."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": scrape_configs,
    }
    if rules is not None:
        (folder / "rules.yaml").write_text(yaml.safe_dump(rules))
        config["rule_files"] = ["rules.yaml"]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                require_tool("prometheus"),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http("prometheus", f"{url}/-/ready", proc, log, timeout=30)
        yield url
    finally:
        stop_process(proc, timeout=30)


def service_monitor_scrape(rendered: list[dict[str, Any]], target: str) -> dict[str, Any]:
    """What prometheus-operator makes of the chart's ServiceMonitor, for one operator pod at
    ``target``: the labels its relabelling gives every target (namespace, service, pod,
    container, endpoint = the port's name, job = the Service's name) and honor_labels."""
    (monitor,) = [o for o in rendered if o["kind"] == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    namespace = monitor["metadata"]["namespace"]
    (service,) = [
        o
        for o in rendered
        if o["kind"] == "Service"
        and any(p.get("name") == endpoint["port"] for p in o["spec"]["ports"])
        and monitor["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()
    ]
    name = service["metadata"]["name"]
    return {
        "job_name": f"serviceMonitor/{namespace}/{monitor['metadata']['name']}/0",
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint["path"],
        "static_configs": [
            {
                "targets": [target],
                "labels": {
                    "namespace": namespace,
                    "service": name,
                    "pod": f"{name}-7d9f8-x2kqp",
                    "container": "operator",
                    "endpoint": endpoint["port"],
                    "job": name,
                },
            }
        ],
    }


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The samples an instant query returns."""
    resp = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = resp.json()
    assert body.get("status") == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result
