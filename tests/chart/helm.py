"""Render the chart with the real helm binary (skipped outside CI when helm is missing)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tts-operator"
# With this release name the full name is just "tts-operator".
RELEASE = "tts-operator"
NAMESPACE = "tts-system"
FULLNAME = "tts-operator"

Obj = dict[str, Any]

# Every toggle on: monitors, rules, dashboards, NetworkPolicy with egress.
ALL_ON: Obj = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "podMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        "dashboards": {"enabled": True},
    },
    "networkPolicy": {
        "enabled": True,
        "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "egress": {"enabled": True, "apiServerCIDRs": ["10.96.0.1/32"]},
    },
}
NAMESPACED: Obj = {"watchNamespaces": ["tts", "tts-batch"]}
# The chart renders only with images the user chose (values.schema.json leaves them
# empty); every render here names these.
IMAGES: Obj = {
    "image": {"repository": "acme/tts-operator"},
    "inference": {"image": {"repository": "acme/tts-inference"}},
}


def with_images(values: Obj | None) -> Obj:
    """``values`` over IMAGES (a deep merge: values win)."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {k: merge(base.get(k), over[k]) if k in base else over[k] for k in over} | {
                k: v for k, v in base.items() if k not in over
            }
        return over

    return dict(merge(IMAGES, values or {}))


def helm() -> str:
    return require_tool("helm")


def run_helm(
    args: Sequence[str], values: Obj | None = None, chart: Path = CHART, images: bool = True
) -> subprocess.CompletedProcess[str]:
    """``helm template`` (or another command) with ``values`` passed on stdin, over IMAGES
    unless ``images`` is False."""
    cmd = [helm(), *args]
    if images:
        values = with_images(values)
    if values is not None:
        cmd += ["--values", "-"]
    return subprocess.run(
        cmd,
        input=json.dumps(values) if values is not None else None,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=chart.parent,
    )


def template_cmd(
    chart: Path = CHART,
    kube_version: str | None = None,
    extra: Sequence[str] = (),
    namespace: str = NAMESPACE,
) -> list[str]:
    cmd = ["template", RELEASE, str(chart), "--namespace", namespace]
    if kube_version:
        cmd += ["--kube-version", kube_version]
    return [*cmd, *extra]


def render_text(
    values: Obj | None = None,
    kube_version: str | None = None,
    extra: Sequence[str] = (),
    chart: Path = CHART,
    namespace: str = NAMESPACE,
) -> str:
    proc = run_helm(template_cmd(chart, kube_version, extra, namespace), values, chart)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(
    values: Obj | None = None,
    kube_version: str | None = None,
    extra: Sequence[str] = (),
    chart: Path = CHART,
    namespace: str = NAMESPACE,
) -> list[Obj]:
    """The rendered objects (hooks such as `helm test`'s pod included)."""
    text = render_text(values, kube_version, extra, chart, namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    matches = [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def kinds(objs: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def rule_groups(objs: list[Obj]) -> list[Obj]:
    """The groups of the rendered PrometheusRule, as a Prometheus rule file holds them."""
    groups: list[Obj] = find(objs, "PrometheusRule")["spec"]["groups"]
    return groups


def write_rule_file(objs: list[Obj], path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule_groups(objs)}, sort_keys=False))
    return path


def alerts(objs: list[Obj]) -> dict[str, Obj]:
    return {
        rule["alert"]: rule
        for group in rule_groups(objs)
        for rule in group["rules"]
        if "alert" in rule
    }


def recording_rules(objs: list[Obj]) -> dict[str, Obj]:
    return {
        rule["record"]: rule
        for group in rule_groups(objs)
        for rule in group["rules"]
        if "record" in rule
    }


def dashboards(objs: list[Obj]) -> dict[str, Obj]:
    """file name -> dashboard JSON, from the rendered dashboard ConfigMaps."""
    out: dict[str, Obj] = {}
    for o in objs:
        if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {}):
            for name, text in o["data"].items():
                out[name] = json.loads(text)
    return out


def chart_copy(tmp: Path) -> Path:
    """A copy of the chart to change in a test."""
    dest = tmp / "tts-operator"
    shutil.copytree(CHART, dest)
    return dest


def render_notes(tmp: Path, values: Obj | None = None) -> str:
    """NOTES.txt as `helm install` prints it (helm template does not render it).

    The chart is copied and NOTES.txt is rendered through `tpl` by an extra
    template, with the same values and built-in objects.
    """
    chart = chart_copy(tmp)
    (chart / "files" / "NOTES.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        'notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n'
    )
    text = render_text(values, extra=["--show-only", "templates/zz-notes.yaml"], chart=chart)
    notes: str = yaml.safe_load(text)["notes"]
    return notes
