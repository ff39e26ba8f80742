"""``helm install`` of the chart on the real control plane; the operator then runs with a
token of the chart's own ServiceAccount, so a verb missing from the chart's RBAC fails here.

kwok plays the kubelet for the operator's Deployment (its pod becomes Running on a
fake node); the operator itself runs in this process with the ServiceAccount's token.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.chart import helm
from tests.operator.conftest import use_kubeconfig
from tests.operator.test_flows import setup, status
from tests.support.cluster import ApiError, ClusterHandle, Kube, namespace
from tests.support.operator_runner import OperatorRunner
from tts_operator import config


def helm_cmd(control_plane: ClusterHandle, *args: str, values: dict[str, Any] | None = None) -> str:
    cmd = [helm.helm(), *args, "--kubeconfig", str(control_plane.kubeconfig)]
    if values is not None:
        values = helm.with_images(values)
        cmd += ["--values", "-"]
    proc = subprocess.run(
        cmd,
        input=json.dumps(values) if values is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=helm.CHART.parent,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture
def release(control_plane: ClusterHandle, ns: str) -> Iterator[dict[str, Any]]:
    """``install(values)`` runs helm install into ``ns``; uninstalled after the test."""
    installed: list[str] = []

    def install(values: dict[str, Any]) -> dict[str, Any]:
        name = f"r{ns[-6:]}"
        helm_cmd(
            control_plane,
            "install",
            name,
            str(helm.CHART),
            "--namespace",
            ns,
            "--wait",
            "--timeout",
            "90s",
            values=values,
        )
        installed.append(name)
        return {"name": name, "fullname": f"{name}-tts-operator"}

    yield {"install": install}
    for name in installed:
        helm_cmd(control_plane, "uninstall", name, "--namespace", ns, "--wait")


def operator_as(
    kube: Kube, ns: str, account: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Kube:
    token = kube.service_account_token(ns, account)
    as_operator = kube.as_token(token)
    use_kubeconfig(monkeypatch, as_operator.write_kubeconfig(tmp_path / "operator.kubeconfig", ns))
    return as_operator


def an_endpoint_becomes_ready(
    kube: Kube, where: str, namespaces: list[str], clusterwide: bool
) -> None:
    """The operator, run as the chart's ServiceAccount, brings an endpoint in ``where`` to Ready."""
    settings = config.Settings(
        namespaces=tuple(namespaces),
        all_namespaces=clusterwide,
        endpoint_url_template="http://{service}.{namespace}.svc:{port}",
    )
    runner = OperatorRunner(
        namespaces=namespaces, clusterwide=clusterwide, memo=kopf.Memo(settings=settings)
    ).start()
    try:
        setup(kube, where)
        kube.wait_for(
            lambda: status(kube, where).get("phase") == "Ready",
            timeout=90,
            message=f"never Ready under the chart's RBAC ({'cluster-wide' if clusterwide else 'namespaced'})",
        )
    finally:
        runner.stop()


def test_namespaced_install_grants_exactly_the_watched_namespace(
    kube: Kube,
    ns: str,
    release: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with namespace(kube, f"{ns[:50]}-w") as watched, namespace(kube, f"{ns[:50]}-x") as other:
        names = release["install"]({"watchNamespaces": [watched]})
        # The operator's own pod runs (kwok), from the chart's Deployment.
        deployment = kube.wait_for(
            lambda: (d := kube.get("deployments", ns, names["fullname"]))
            and (d.get("status") or {}).get("availableReplicas")
            and d,
            timeout=60,
            message="the operator Deployment never became available",
        )
        pod_spec = deployment["spec"]["template"]["spec"]
        assert pod_spec["serviceAccountName"] == names["fullname"]

        as_operator = operator_as(kube, ns, names["fullname"], tmp_path, monkeypatch)
        with pytest.raises(ApiError) as forbidden:
            as_operator.list("ttsendpoints", other)
        assert forbidden.value.status == 403
        with pytest.raises(ApiError) as no_list:
            as_operator.list("secrets", watched)
        assert no_list.value.status == 403, "Secrets are read by name only"

        an_endpoint_becomes_ready(kube, watched, [watched], clusterwide=False)


def test_cluster_wide_install_serves_any_namespace(
    kube: Kube,
    ns: str,
    release: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with namespace(kube, f"{ns[:50]}-w") as watched:
        names = release["install"]({})
        role = kube.get("clusterroles", None, names["fullname"])
        assert role is not None
        operator_as(kube, ns, names["fullname"], tmp_path, monkeypatch)
        an_endpoint_becomes_ready(kube, watched, [], clusterwide=True)
