"""The PrometheusRule: promtool checks the rendered rules, unit-tests every alert
(fires when it should, quiet when it should not), and the toggles work."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.helm import ALL_ON, ROOT, Obj, alerts, recording_rules, render, rule_groups
from tests.conftest import require_tool

UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
MONITORING_DOC = ROOT / "docs" / "monitoring.md"


def _with(**alerts_values: Obj) -> Obj:
    rule = {"enabled": True, "alerts": alerts_values}
    return {**ALL_ON, "monitoring": {**ALL_ON["monitoring"], "prometheusRule": rule}}


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    return render(ALL_ON)


def _write_rules(objs: list[Obj], path: Path, *, annotations: bool = True) -> Path:
    groups = rule_groups(objs)
    if not annotations:
        groups = [
            {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups
        ]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_check_rules(rendered: list[Obj], tmp_path: Path) -> None:
    rules = _write_rules(rendered, tmp_path / "rules.yaml")
    proc = subprocess.run(
        [require_tool("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    total = sum(len(g["rules"]) for g in rule_groups(rendered))
    assert f"SUCCESS: {total} rules found" in proc.stdout, proc.stdout


def test_promtool_unit_tests_for_every_alert(rendered: list[Obj], tmp_path: Path) -> None:
    _write_rules(rendered, tmp_path / "rules.yaml", annotations=False)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = subprocess.run(
        [require_tool("promtool"), "test", "rules", str(tmp_path / UNIT_TESTS.name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test(rendered: list[Obj]) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts(rendered))
    assert names, "no alerts rendered"
    assert not names - fires, f"alerts without a unit test where they fire: {sorted(names - fires)}"
    assert not names - quiet, (
        f"alerts without a unit test where they stay quiet: {sorted(names - quiet)}"
    )
    assert not (fires | quiet) - names, "unit tests for alerts the chart no longer has"


def test_every_alert_has_severity_summary_description_and_a_runbook(rendered: list[Obj]) -> None:
    doc = MONITORING_DOC.read_text()
    headings = {
        re.sub(r"[^a-z0-9 -]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+ (.+)$", doc, flags=re.MULTILINE)
    }
    for name, rule in alerts(rendered).items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        ann = rule["annotations"]
        assert ann["summary"], name
        assert ann["description"], name
        base, _, anchor = ann["runbook_url"].partition("#")
        assert base.endswith("docs/monitoring.md"), name
        assert anchor == name.lower(), name
        assert anchor in headings, f"docs/monitoring.md has no section for {name}"


def test_alert_for_severity_and_threshold_can_be_overridden() -> None:
    objs = render(
        _with(
            TTSLatencyHigh={"for": "3m", "severity": "critical", "threshold": 2.5},
            TTSJobFailureRatioHigh={"minJobs": 50},
        )
    )
    rule = alerts(objs)["TTSLatencyHigh"]
    assert rule["for"] == "3m"
    assert rule["labels"]["severity"] == "critical"
    assert rule["expr"].endswith("> 2.5")
    assert ">= 50" in alerts(objs)["TTSJobFailureRatioHigh"]["expr"]


def test_alerts_and_recording_rules_are_toggles() -> None:
    every = set(alerts(render(ALL_ON)))
    objs = render(_with(TTSLatencyHigh={"enabled": False}))
    assert set(alerts(objs)) == every - {"TTSLatencyHigh"}
    # The operator-down rule matches the ServiceMonitor's job label, so it needs it.
    no_monitor = {
        **ALL_ON,
        "monitoring": {**ALL_ON["monitoring"], "serviceMonitor": {"enabled": False}},
    }
    assert "TTSOperatorDown" not in alerts(render(no_monitor))
    no_records = render(
        {
            **ALL_ON,
            "monitoring": {
                **ALL_ON["monitoring"],
                "prometheusRule": {"enabled": True, "recordingRules": {"enabled": False}},
            },
        }
    )
    assert not recording_rules(no_records)
    assert set(alerts(no_records)) == every
    every_off = {name: {"enabled": False} for name in every}
    nothing = render(
        {
            **ALL_ON,
            "monitoring": {
                **ALL_ON["monitoring"],
                "prometheusRule": {
                    "enabled": True,
                    "recordingRules": {"enabled": False},
                    "alerts": every_off,
                },
            },
        }
    )
    assert not [o for o in nothing if o["kind"] == "PrometheusRule"]
    labelled = render(
        {
            **ALL_ON,
            "monitoring": {
                **ALL_ON["monitoring"],
                "prometheusRule": {"enabled": True, "additionalAlertLabels": {"team": "speech"}},
            },
        }
    )
    assert all(r["labels"]["team"] == "speech" for r in alerts(labelled).values())
