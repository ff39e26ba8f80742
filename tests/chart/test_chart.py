"""The Helm chart, rendered by the real helm binary: lint, strict validation for the
oldest and newest Kubernetes it supports, RBAC from the operator's one list,
settings the operator really parses, the values schema, NOTES and `helm test`."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tests.chart import generate, images
from tests.chart.helm import (
    ALL_ON,
    CHART,
    FULLNAME,
    NAMESPACE,
    NAMESPACED,
    RELEASE,
    Obj,
    find,
    kinds,
    render,
    render_notes,
    run_helm,
    template_cmd,
)
from tests.chart.monitoring_schemas import SCHEMAS
from tests.conftest import require_tool
from tts_operator import config
from tts_operator.kube import KINDS, RBAC_RULES

CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def _kube_range() -> tuple[str, str]:
    """Oldest and newest Kubernetes the chart supports, from Chart.yaml's kubeVersion."""
    m = re.fullmatch(
        r">=(\d+)\.(\d+)\.0-0 <(\d+)\.(\d+)\.0-0", str(CHART_META["kubeVersion"]).strip()
    )
    assert m, f"kubeVersion {CHART_META['kubeVersion']!r} is not '>=A.B.0-0 <C.D.0-0'"
    low = f"{m.group(1)}.{m.group(2)}.0"
    below = (int(m.group(3)), int(m.group(4)))
    newest = max(
        (v for v in all_versions() if tuple(map(int, v.split(".")[:2])) < below),
        key=lambda v: tuple(map(int, v.split("."))),
    )
    return low, newest


OLDEST, NEWEST = _kube_range()
VALUE_SETS = {"defaults": None, "all-toggles-on": ALL_ON, "namespaced": NAMESPACED}
# Kinds kubernetes-validate has no schema for: validated against the small
# hand-written schemas in monitoring_schemas.py instead, by kind.
MONITORING_KINDS = set(SCHEMAS)


# --------------------------------------------------------------------------- lint and validation


@pytest.mark.parametrize("values", [None, ALL_ON, NAMESPACED], ids=["defaults", "all-on", "ns"])
def test_helm_lint_strict(values: Obj | None) -> None:
    proc = run_helm(["lint", "--strict", str(CHART)], values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_kube_version_range_is_declared_and_enforced() -> None:
    assert ("1.29.0", all_versions()[-1]) == (OLDEST, NEWEST), (
        "the chart is validated for the oldest and newest Kubernetes its kubeVersion allows; "
        "kubernetes-validate now knows a newer release: test it and raise the bound"
    )
    major, minor, _ = (int(x) for x in OLDEST.split("."))
    too_old = f"{major}.{minor - 1}.0"
    nmajor, nminor, _ = (int(x) for x in NEWEST.split("."))
    too_new = f"{nmajor}.{nminor + 1}.0"
    for version in (too_old, too_new):
        proc = run_helm(template_cmd(kube_version=version))
        assert proc.returncode != 0, version
        assert "kubeVersion" in proc.stderr, proc.stderr


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_objects_validate_strictly(name: str, version: str) -> None:
    """`helm template | kubernetes-validate --strict` for each Kubernetes version.

    The Prometheus Operator's kinds are taken out by kind first and checked
    against hand-written schemas; kubernetes-validate must then pass every
    object it is given and warn about none (a warning means a kind it skipped).
    """
    objs = render(VALUE_SETS[name], kube_version=version)
    builtin = [o for o in objs if o["kind"] not in MONITORING_KINDS]
    monitoring = [o for o in objs if o["kind"] in MONITORING_KINDS]
    proc = subprocess.run(
        [require_tool("kubernetes-validate"), "--strict", "-k", version, "-"],
        input=yaml.safe_dump_all(builtin, sort_keys=False),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [line for line in lines if not line.startswith("INFO")], proc.stdout
    assert len([line for line in lines if " passed " in line]) == len(builtin)
    for obj in monitoring:
        jsonschema.validate(obj, SCHEMAS[obj["kind"]])
    if name == "all-toggles-on":
        assert {o["kind"] for o in monitoring} == MONITORING_KINDS


def test_toggles_decide_what_is_rendered() -> None:
    assert kinds(render()) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Pod",
            "Service",
            "ServiceAccount",
        ]
    )
    assert kinds(render(ALL_ON)) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "Pod",
            "PodMonitor",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    off = render({"tests": {"enabled": False}, "rbac": {"create": False}})
    assert kinds(off) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]


# --------------------------------------------------------------------------- the operator


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({}, "image.repository"),
        ({"image": {"repository": "acme/op"}}, "inference.image.repository"),
    ],
)
def test_the_chart_refuses_to_render_without_the_images_the_user_built(
    values: dict[str, Any], missing: str
) -> None:
    proc = run_helm(template_cmd(), values, images=False)
    assert proc.returncode != 0
    assert f"set {missing} to the" in proc.stderr
    assert "no public registry holds one" in proc.stderr


def test_operator_deployment_runs_one_replica_that_never_overlaps() -> None:
    dep = find(render(), "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"acme/tts-operator:{CHART_META['appVersion']}"
    assert "command" not in container, "the image's entrypoint runs"
    assert "args" not in container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def _settings_env(objs: list[Obj]) -> dict[str, str]:
    dep = find(objs, "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    (source,) = container["envFrom"]
    cm = find(objs, "ConfigMap", source["configMapRef"]["name"])
    data: dict[str, str] = cm["data"]
    return data


def test_settings_reach_the_operator_as_env_it_parses() -> None:
    values = {
        "watchNamespaces": ["tts", "tts-batch"],
        "operator": {
            "metricsPort": 9090,
            "healthPort": 9091,
            "logFormat": "json",
            "peering": "tts",
            "endpointUrlTemplate": "http://{service}.{namespace}:{port}",
        },
        "autoscaling": {"engine": "keda", "prometheusUrl": "http://prom.monitoring:9090"},
        "inference": {
            "image": {
                "registry": "registry.example.com",
                "repository": "ml/tts-inference",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "voiceAliases": {"echo": "anna", "alloy": "narrator"},
        },
    }
    env = _settings_env(render(values))
    settings = config.parse([], env)
    assert settings == config.Settings(
        namespaces=("tts", "tts-batch"),
        all_namespaces=False,
        metrics_port=9090,
        health_port=9091,
        peering="tts",
        inference_image="registry.example.com/ml/tts-inference:1.2.3",
        image_pull_policy="Always",
        log_format="json",
        endpoint_url_template="http://{service}.{namespace}:{port}",
        autoscaler="keda",
        prometheus_url="http://prom.monitoring:9090",
        voice_aliases=(("alloy", "narrator"), ("echo", "anna")),
    )
    defaults = config.parse([], _settings_env(render()))
    assert defaults.all_namespaces
    assert not defaults.namespaces
    assert defaults.inference_image == f"acme/tts-inference:{CHART_META['appVersion']}"
    assert (defaults.metrics_port, defaults.health_port) == (8080, 8081)


def test_every_env_setting_is_one_the_operator_reads() -> None:
    """A misspelt TTS_OPERATOR_* variable would be ignored silently: none may be."""
    package = images.ROOT / "operator" / "tts_operator"
    # config.py names each variable without the prefix; main.py reads one whole.
    read = set(re.findall(r'"([A-Z][A-Z_]+)"', (package / "config.py").read_text()))
    read |= set(re.findall(r'"TTS_OPERATOR_([A-Z_]+)"', (package / "main.py").read_text()))
    for values in (
        None,
        ALL_ON,
        NAMESPACED,
        {"operator": {"peering": "p", "endpointUrlTemplate": "http://{service}"}},
    ):
        for key in _settings_env(render(values)):
            assert key.startswith(config.ENV_PREFIX), key
            assert key.removeprefix(config.ENV_PREFIX) in read, f"{key} is not read by the operator"


def test_a_settings_change_rolls_the_pod_and_nothing_else_does() -> None:
    def checksum(values: Obj | None) -> str:
        dep = find(render(values), "Deployment")
        value: str = dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum(None)
    assert checksum({"operator": {"logFormat": "json"}}) != base
    assert (
        checksum(
            {"inference": {"image": {"repository": "x/y", "tag": "2", "pullPolicy": "Always"}}}
        )
        != base
    )
    assert checksum(ALL_ON) == base
    assert checksum({"operator": {"resources": {"requests": {"cpu": "1"}}}}) == base


# --------------------------------------------------------------------------- RBAC


def test_rbac_file_is_generated_from_the_operators_one_list() -> None:
    path = generate.RBAC_FILE
    assert path.read_text() == generate.rbac_rules_yaml(), (
        "charts/tts-operator/files/rbac-rules.yaml is stale: run `python -m tests.chart.generate`"
    )
    assert yaml.safe_load(path.read_text()) == RBAC_RULES


def test_cluster_mode_grants_exactly_the_operators_rules() -> None:
    objs = render()
    role = find(objs, "ClusterRole")
    assert role["rules"] == RBAC_RULES
    binding = find(objs, "ClusterRoleBinding")
    sa = find(objs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    dep = find(objs, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


# Resources in RBAC_RULES that are cluster-scoped: a Role cannot grant them.
CLUSTER_SCOPED = {k.plural for k in KINDS.values() if not k.namespaced} | {
    "namespaces",
    "clusterkopfpeerings",
}


def test_namespaced_mode_needs_no_cluster_wide_rights() -> None:
    objs = render(NAMESPACED)
    # Beyond the watched namespaces: get on two CRDs by name, nothing else.
    (cluster_role,) = [o for o in objs if o["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": ["servicemonitors.monitoring.coreos.com", "scaledobjects.keda.sh"],
            "verbs": ["get"],
        }
    ]
    (cluster_binding,) = [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    expected = []
    for rule in RBAC_RULES:
        resources = [r for r in rule["resources"] if r not in CLUSTER_SCOPED]
        if resources:
            expected.append({**rule, "resources": resources})
    roles = [o for o in objs if o["kind"] == "Role"]
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    assert sorted(o["metadata"]["namespace"] for o in roles) == ["tts", "tts-batch"]
    assert sorted(o["metadata"]["namespace"] for o in bindings) == ["tts", "tts-batch"]
    for role in roles:
        assert role["rules"] == expected
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    every_resource = {r for rule in RBAC_RULES for r in rule["resources"]}
    assert every_resource >= CLUSTER_SCOPED, (
        "the chart's cluster-scoped list names a resource the operator no longer uses"
    )
    assert config.parse([], _settings_env(objs)).namespaces == ("tts", "tts-batch")


# --------------------------------------------------------------------------- CRDs


def _crd_docs(text: str) -> list[Obj]:
    return sorted((d for d in yaml.safe_load_all(text) if d), key=lambda d: d["metadata"]["name"])


SOURCE_CRDS = _crd_docs(
    "---\n".join(p.read_text() for p in sorted((images.ROOT / "crds").glob("*.yaml")))
)


def test_the_chart_packages_the_crds_that_docs_upgrade_applies(tmp_path: Path) -> None:
    """docs/upgrade.md applies the crds/ folder of the chart being upgraded to
    (`helm pull --untar`, then `kubectl apply --server-side -f <chart>/crds/`):
    the packaged chart must carry exactly crds/."""
    proc = run_helm(["package", str(CHART), "--destination", str(tmp_path)], images=False)
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("tts-operator-*.tgz")
    import tarfile

    with tarfile.open(archive) as tar:
        packed = {
            Path(m.name).name: tar.extractfile(m).read().decode()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.name.startswith("tts-operator/crds/")
        }
    source = {p.name: p.read_text() for p in (images.ROOT / "crds").glob("*.yaml")}
    assert packed == source


def test_helm_show_crds_is_a_stream_of_the_source_crds() -> None:
    proc = run_helm(["show", "crds", str(CHART)], images=False)
    assert proc.returncode == 0, proc.stderr
    assert _crd_docs(proc.stdout) == SOURCE_CRDS


# --------------------------------------------------------------------------- monitoring objects


def test_monitors_select_the_objects_that_serve_metrics() -> None:
    from tts_operator.builders import objects as b

    objs = render(ALL_ON)
    service = find(objs, "Service")
    monitor = find(objs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kps"

    endpoint = yaml.safe_load((images.ROOT / "examples" / "10-ttsendpoint.yaml").read_text())
    endpoint["metadata"].update(namespace="tts", uid="0000")
    server = b.deployment(endpoint, b.BuildConfig(), cache_ready=True)
    pod = server["spec"]["template"]
    podmonitor = find(objs, "PodMonitor")
    assert (
        podmonitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert podmonitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    assert podmonitor["spec"]["namespaceSelector"] == {"any": True}
    ns = find(render({**ALL_ON, **NAMESPACED}), "PodMonitor")
    assert ns["spec"]["namespaceSelector"] == {"matchNames": ["tts", "tts-batch"]}
    # The operator's own pods never match: they are component=operator.
    dep = find(objs, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert not podmonitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_dashboard_configmap_carries_the_sidecar_label_and_the_json() -> None:
    objs = render(ALL_ON)
    (cm,) = [
        o
        for o in objs
        if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = json.loads((CHART / "files" / "dashboards" / "tts-operator.json").read_text())
    assert json.loads(cm["data"]["tts-operator.json"]) == source
    moved = render(
        {
            "monitoring": {
                "dashboards": {"enabled": True, "namespace": "grafana", "labels": {"dash": "yes"}}
            }
        }
    )
    (cm,) = [o for o in moved if o["kind"] == "ConfigMap" and "dash" in o["metadata"]["labels"]]
    assert cm["metadata"]["namespace"] == "grafana"


def test_network_policy_lets_in_only_metrics_health_and_the_test_pod() -> None:
    objs = render(ALL_ON)
    policy = find(objs, "NetworkPolicy")
    dep = find(objs, "Deployment")
    assert (
        policy["spec"]["podSelector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    (ingress,) = policy["spec"]["ingress"]
    assert {p["port"] for p in ingress["ports"]} == {"metrics", "health"}
    test_pod = find(objs, "Pod")
    selectors = [
        peer["podSelector"]["matchLabels"] for peer in ingress["from"] if "podSelector" in peer
    ]
    assert any(s.items() <= test_pod["metadata"]["labels"].items() for s in selectors)
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, 8000} <= egress_ports
    open_in = find(
        render(
            {
                "networkPolicy": {
                    "enabled": True,
                    "egress": {"enabled": False, "apiServerPorts": [443]},
                }
            }
        ),
        "NetworkPolicy",
    )
    assert "from" not in open_in["spec"]["ingress"][0]
    assert open_in["spec"]["policyTypes"] == ["Ingress"]


# --------------------------------------------------------------------------- values and schema


def _schema_paths(node: Obj, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Obj]]:
    for key, sub in node.get("properties", {}).items():
        yield (*path, key), sub
        yield from _schema_paths(sub, (*path, key))


def test_values_yaml_documents_every_key_above_it() -> None:
    """Every key the schema closes over has a comment line right above it in values.yaml."""
    documented = {p for p, _ in _schema_paths(SCHEMA)}
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        path = tuple(k for _, k in stack)
        if path not in documented:
            continue  # inside a pass-through object (resources, securityContext, labels)
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not above.strip().startswith("#"):
            missing.append(".".join(path))
    assert not missing, f"keys without a comment above them in values.yaml: {missing}"


def test_schema_closes_every_object_and_describes_every_key() -> None:
    for path, node in _schema_paths(SCHEMA):
        assert "description" in node or node.get("type") == "object", ".".join(path)
        if "properties" in node:
            assert node.get("additionalProperties") is False, ".".join(path)
    assert SCHEMA["additionalProperties"] is False
    jsonschema.validate(VALUES, SCHEMA)


def _set(values: Obj, dotted: str, value: Any) -> Obj:
    out = copy.deepcopy(values)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


BAD_VALUES = [
    ("imagee", {"repository": "x"}, "Additional property imagee is not allowed"),
    ("image.tag", 1, "image.tag: Invalid type. Expected: string, given: integer"),
    ("image.pullPolicy", "Sometimes", "image.pullPolicy: image.pullPolicy must be one of"),
    (
        "inference.image.repository",
        "Not/A/Repository",
        "inference.image.repository: Does not match pattern",
    ),
    ("watchNamespaces", ["Bad_NS"], "watchNamespaces.0: Does not match pattern"),
    ("watchNamespaces", "tts", "watchNamespaces: Invalid type. Expected: array, given: string"),
    ("operator.logFormat", "xml", "operator.logFormat: operator.logFormat must be one of"),
    ("operator.metricsPort", 70000, "operator.metricsPort: Must be less than or equal to 65535"),
    ("operator.reconcileInterval", 0, "operator.reconcileInterval: Must be greater than 0"),
    ("operator.verbose", True, "operator: Additional property verbose is not allowed"),
    ("rbac.create", "yes", "rbac.create: Invalid type. Expected: boolean, given: string"),
    (
        "monitoring.serviceMonitor.interval",
        "30",
        "monitoring.serviceMonitor.interval: Does not match pattern",
    ),
    (
        "monitoring.prometheusRule.alerts.TTSLatencyHigh.for",
        "10 minutes",
        "alerts.TTSLatencyHigh.for: Does not match pattern",
    ),
    (
        "monitoring.prometheusRule.alerts.TTSLatencyHigh.severity",
        "page",
        "alerts.TTSLatencyHigh.severity: monitoring.prometheusRule.alerts.TTSLatencyHigh.severity must be one of",
    ),
    (
        "monitoring.prometheusRule.alerts.TTSLatencyHigh.threshold",
        "10s",
        "alerts.TTSLatencyHigh.threshold: Invalid type. Expected: number, given: string",
    ),
    (
        "monitoring.prometheusRule.alerts.TTSNewAlert",
        {"enabled": True},
        "alerts: Additional property TTSNewAlert is not allowed",
    ),
    (
        "monitoring.prometheusRule.runbookUrl",
        "docs/monitoring.md",
        "prometheusRule.runbookUrl: Does not match pattern",
    ),
    (
        "monitoring.dashboards.labels",
        {"grafana_dashboard": 1},
        "monitoring.dashboards.labels.grafana_dashboard: Invalid type. Expected: string, given: integer",
    ),
    (
        "networkPolicy.egress.apiServerCIDRs",
        ["10.0.0.1"],
        "apiServerCIDRs.0: Does not match pattern",
    ),
    (
        "inference.voiceAliases",
        {"default": "narrator"},
        'Property name of "default" does not match',
    ),
    (
        "inference.voiceAliases",
        {"alloy": "../x"},
        "inference.voiceAliases.alloy: Does not match pattern",
    ),
    (
        "imagePullSecrets",
        ["regcred"],
        "imagePullSecrets.0: Invalid type. Expected: object, given: string",
    ),
]


@pytest.mark.parametrize(
    ("key", "value", "message"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES]
)
def test_schema_rejects_bad_values_with_a_useful_message(
    key: str, value: Any, message: str
) -> None:
    proc = run_helm(template_cmd(), _set({}, key, value))
    assert proc.returncode != 0, f"{key}={value!r} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- NOTES and helm test


def test_notes_give_runnable_next_steps(tmp_path: Path) -> None:
    from tts_operator.builders.objects import SECRET_KEYS

    objs = render()
    dep = find(objs, "Deployment")
    notes = render_notes(tmp_path / "a")
    assert (
        f"kubectl --namespace {NAMESPACE} rollout status deployment/{dep['metadata']['name']}"
        in notes
    )
    assert f"helm test {RELEASE} --namespace {NAMESPACE}" in notes
    assert "kubectl apply --server-side --force-conflicts -f charts/tts-operator/crds/" in notes
    for key in SECRET_KEYS:
        assert f"--from-literal={key}=" in notes
    assert "every namespace" in notes
    assert "{{" not in notes
    assert "<no value>" not in notes
    scoped = render_notes(tmp_path / "b", {**NAMESPACED, **ALL_ON})
    assert "in: tts, tts-batch (no cluster-wide rights)" in scoped
    assert "kubectl --namespace tts create secret generic" in scoped
    assert "PrometheusRule" in scoped
    assert "dashboard" in scoped


class _Proxy(BaseHTTPRequestHandler):
    """An HTTP proxy standing in for the cluster's Service: /healthz answers ok (as
    Kopf's liveness does), /metrics comes from a real OperatorMetrics registry."""

    metrics = b""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlparse(self.path)
        if url.path == "/healthz" and url.port == 8081:
            body, status = b'{"status": "ok"}', 200
        elif url.path == "/metrics" and url.port == 8080:
            body, status = self.metrics, 200
        else:
            body, status = b"not found", 404
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def proxy() -> Iterator[tuple[str, type[_Proxy]]]:
    handler = type("Handler", (_Proxy,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_helm_test_pod_checks_health_and_operator_metrics(
    proxy: tuple[str, type[_Proxy]],
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from tts_operator.metrics import OperatorMetrics

    pod = find(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert (
        container["image"]
        == find(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert container["command"] == ["python", "-c"]
    script = container["args"][0]
    assert f"http://{FULLNAME}.{NAMESPACE}.svc" in script

    url, handler = proxy
    registry = CollectorRegistry()
    OperatorMetrics(registry)
    handler.metrics = generate_latest(registry)
    env = {"http_proxy": url, "HTTP_PROXY": url, "no_proxy": "", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("ok http://") == 2

    handler.metrics = b"# an exporter that is not the operator\nup 1\n"
    bad = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0
    assert "no tts_operator_ metrics" in bad.stderr
