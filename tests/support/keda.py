"""KEDA's real operator (built by tests/cluster/build.py), run against a cluster.

It watches every namespace with the kubeconfig it is given, polls the Prometheus
triggers of each ScaledObject, and scales their Deployments itself between zero
and one (the HPA it also makes needs KEDA's metrics API server, which is not run:
from one to many is the HPA test's business, not this one's).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import yaml

from tests.cluster import build
from tests.support.cluster import Kube, install_crds, namespace, write_pki
from tests.support.process import stop_process, wait_for_http
from tests.support.s3 import free_port

KEDA_NAMESPACE = "keda"


def keda_crds() -> list[dict[str, object]]:
    """Every CRD KEDA's operator watches, at the pinned version."""
    return [yaml.safe_load(crd.read_text()) for crd in sorted(build.keda_crds().glob("*.yaml"))]


@contextlib.contextmanager
def running_keda(kube: Kube, kubeconfig: Path, folder: Path) -> Iterator[Path]:
    """KEDA's operator, ready (its health probe answers); yields its log file."""
    binary = build.keda_operator()
    install_crds(kube, keda_crds())
    certs = folder / "certs"
    pki = write_pki(folder / "pki")
    certs.mkdir(parents=True)
    # Its gRPC metrics service (for KEDA's metrics API server) insists on a key pair.
    for name, source in (
        ("ca.crt", "ca.crt"),
        ("tls.crt", "server.crt"),
        ("tls.key", "server.key"),
    ):
        shutil.copyfile(pki[source], certs / name)
    probe = free_port()
    log = folder / "keda-operator.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")},
        "KUBECONFIG": str(kubeconfig),
        "WATCH_NAMESPACE": "",
        "POD_NAMESPACE": KEDA_NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
    }
    argv = [
        str(binary),
        f"--health-probe-bind-address=127.0.0.1:{probe}",
        f"--metrics-bind-address=127.0.0.1:{free_port()}",
        f"--metrics-service-bind-address=127.0.0.1:{free_port()}",
        f"--cert-dir={certs}",
        f"--ca-dir={certs}",
        "--enable-webhook-patching=false",
        "--enable-apiservice-patching=false",
        "--zap-log-level=info",
    ]
    with namespace(kube, KEDA_NAMESPACE), log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_http(
                "keda-operator", f"http://127.0.0.1:{probe}/readyz", proc, log, timeout=60
            )
            yield log
        finally:
            stop_process(proc, timeout=30)
