"""Fixtures that run the real Kopf runtime against the real test control plane.

- ``kube``/``ns`` (tests/conftest.py): the cluster's admin client and a namespace per test.
- ``operator_kubeconfig``: the chart's RBAC for ``ns`` (``helm template`` in namespaced mode:
  its ServiceAccount, Role and RoleBinding) applied to the cluster, and a kubeconfig holding
  a token of that ServiceAccount: the operator runs with exactly the rights the chart grants.
- ``run_operator(**options) -> OperatorRunner``: starts ``kopf.operator`` on its own thread,
  watching ``ns`` with that kubeconfig; ``.stop()``, ``.start()`` and ``.restart()`` are
  operator restarts; every runner still running is stopped at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config.kube_config
import pytest

from tests.chart import helm
from tests.support.cluster import Kube
from tests.support.operator_runner import OperatorRunner
from tts_operator import config

RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def apply_chart_rbac(kube: Kube, release_namespace: str, values: dict[str, Any]) -> str:
    """Apply the RBAC objects ``helm template`` renders; the ServiceAccount's name."""
    docs = helm.render(values, namespace=release_namespace)
    account = ""
    for doc in docs:
        if doc["kind"] in RBAC_KINDS:
            kube.apply(doc, release_namespace)
            if doc["kind"] == "ServiceAccount":
                account = doc["metadata"]["name"]
    assert account, "the chart rendered no ServiceAccount"
    return account


def use_kubeconfig(monkeypatch: pytest.MonkeyPatch, file: Path) -> None:
    """Point Kopf's login and the kubernetes client's default at ``file``."""
    monkeypatch.setenv("KUBECONFIG", str(file))
    # The kubernetes client reads $KUBECONFIG once, at import: point its default there too.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(file))
    # Inside a pod, login_via_client would prefer the in-cluster service account.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


@pytest.fixture
def operator_kubeconfig(
    kube: Kube, ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A kubeconfig with a token of the chart's ServiceAccount, granted on ``ns`` only."""
    account = apply_chart_rbac(kube, ns, {"watchNamespaces": [ns]})
    token = kube.service_account_token(ns, account)
    file = kube.as_token(token).write_kubeconfig(tmp_path / "operator.kubeconfig", ns)
    use_kubeconfig(monkeypatch, file)
    saved = kubernetes.client.Configuration.get_default_copy()
    try:
        yield file
    finally:
        kubernetes.client.Configuration.set_default(saved)


RunOperator = Callable[..., OperatorRunner]


@pytest.fixture
def run_operator(ns: str, operator_kubeconfig: Path) -> Iterator[RunOperator]:
    """Start the real Kopf runtime on ``ns``: ``run_operator(registry=None, memo=..., ...)``.

    ``registry`` defaults to ``kopf.get_default_registry()`` (where ``import tts_operator.main``
    registers the operator's handlers); without ``memo`` the operator's settings watch ``ns``
    and reach endpoints at their in-cluster Service URL.
    """
    runners: list[OperatorRunner] = []

    def run(registry: kopf.OperatorRegistry | None = None, **options: Any) -> OperatorRunner:
        options.setdefault("namespaces", [ns])
        options.setdefault(
            "memo",
            kopf.Memo(
                settings=config.Settings(
                    namespaces=(ns,),
                    endpoint_url_template="http://{service}.{namespace}.svc:{port}",
                )
            ),
        )
        runner = OperatorRunner(registry, **options)
        runners.append(runner)
        return runner.start()

    yield run
    failures: list[RuntimeError] = []
    for runner in reversed(runners):
        try:
            runner.stop()
        except RuntimeError as e:
            failures.append(e)
    if failures:
        raise failures[0]
