"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster import (
    ClusterHandle,
    ControlPlane,
    Kube,
    build_dir,
    install_crds,
    project_crds,
)
from tests.support.cluster import namespace as cluster_namespace
from tests.support.s3 import S3Server, s3_server

BIN = Path(sys.executable).parent


def require_tool(name: str) -> str:
    """The path of a tool a test needs: skipped when missing, but a failure under CI."""
    path = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required under CI and is not installed (make test installs it)")
    pytest.skip(f"{name} is not installed")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 behind a counting, fault-injecting proxy."""
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def clean_s3(s3: S3Server) -> Iterator[S3Server]:
    """The shared server with its counters reset and no faults, before and after."""
    s3.proxy.clear_faults()
    s3.proxy.rate = None
    s3.traffic.reset()
    yield s3
    s3.proxy.clear_faults()
    s3.proxy.rate = None


@pytest.fixture
def tts_inference() -> list[str]:
    """The console script, as a command-line prefix."""
    return [str(BIN / "tts-inference")]


# ----------------------------------------------------------------- the test control plane

CLUSTER_LOG_KEY = pytest.StashKey[Any]()


@pytest.fixture(scope="session")
def control_plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterHandle]:
    """A real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).

    Started once per session from the binaries ``python -m tests.cluster.build``
    makes (built here when missing), with the project's CRDs installed. With
    TTS_TEST_KUBECONFIG set, that cluster is used instead and nothing is started.
    """
    external = os.environ.get("TTS_TEST_KUBECONFIG")
    if external:
        kube = Kube.from_kubeconfig(Path(external))
        install_crds(kube, project_crds())
        yield ClusterHandle(kube=kube, kubeconfig=Path(external), plane=None)
        return
    require_tool("go")
    plane = ControlPlane(build_dir(), tmp_path_factory.mktemp("cluster"))
    request.config.stash[CLUSTER_LOG_KEY] = plane
    try:
        plane.start()
        install_crds(plane.kube(), project_crds())
        yield ClusterHandle(kube=plane.kube(), kubeconfig=plane.kubeconfig_path, plane=plane)
    finally:
        plane.stop()


@pytest.fixture
def kube(control_plane: ClusterHandle) -> Kube:
    """The cluster's client with admin rights."""
    return control_plane.kube


@pytest.fixture
def ns(request: pytest.FixtureRequest, kube: Kube) -> Iterator[str]:
    """A namespace of this test's own, deleted after it."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    with cluster_namespace(kube, f"{base}-{uuid.uuid4().hex[:6]}") as name:
        yield name


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failing test that used the control plane carries each component's log tail."""
    report = yield
    plane = item.config.stash.get(CLUSTER_LOG_KEY, None)
    if report.failed and plane is not None and "control_plane" in getattr(item, "fixturenames", ()):
        report.sections.append(("control plane logs", plane.logs(40)))
    return report
