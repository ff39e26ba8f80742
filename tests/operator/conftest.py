"""Fixtures that run the real Kopf runtime against an emulated API server (no cluster).

- ``api``: the ApiServer (tests/support/kube_emulator.py) on 127.0.0.1 with the project's CRDs,
  namespace ``tts-test``, and KUBECONFIG pointing at it for Kopf and the kubernetes client.
- ``run_operator(registry=None, **options) -> OperatorRunner``: starts ``kopf.operator`` on its
  own thread, watching ``tts-test``; ``.stop()``, ``.start()`` and ``.restart()`` simulate
  operator restarts; every runner still running is stopped at teardown.
- ``wait_for(predicate, timeout=10.0, message="")``: the predicate's first truthy value, re-checked
  on every change the server stores (no sleeps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config.kube_config
import pytest

from tests.support.kube_emulator import ApiServer, OperatorRunner, load_manifests

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "tts-test"


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    """The emulated API server, with the project's CRDs, and a kubeconfig that names it."""
    crds = load_manifests(sorted((ROOT / "crds").glob("*.yaml")))
    with ApiServer(crds=crds, namespaces=[NAMESPACE]) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # The kubernetes client reads $KUBECONFIG once, at import: point its default there too.
        monkeypatch.setattr(
            kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig)
        )
        # Inside a pod, login_via_client would prefer the in-cluster service account.
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
        # Kopf's login_via_client loads the kubeconfig into the client's global default.
        saved = kubernetes.client.Configuration.get_default_copy()
        try:
            yield server
        finally:
            kubernetes.client.Configuration.set_default(saved)


RunOperator = Callable[..., OperatorRunner]


@pytest.fixture
def run_operator(api: ApiServer) -> Iterator[RunOperator]:
    """Start the real Kopf runtime: ``run_operator(registry=None, namespaces=("tts-test",), ...)``.

    ``registry`` defaults to ``kopf.get_default_registry()`` (where ``import tts_operator.main``
    registers the operator's handlers). Other keywords go to OperatorRunner: ``standalone``,
    ``peering_name``, ``clusterwide``, ``settings`` (a factory of OperatorSettings), ``memo``.
    """
    runners: list[OperatorRunner] = []

    def run(registry: kopf.OperatorRegistry | None = None, **options: Any) -> OperatorRunner:
        options.setdefault("namespaces", [NAMESPACE])
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


WaitFor = Callable[..., Any]


@pytest.fixture
def wait_for(api: ApiServer) -> WaitFor:
    """``wait_for(predicate, timeout=10.0, message="")``: see ApiServer.wait_for."""
    return api.wait_for
