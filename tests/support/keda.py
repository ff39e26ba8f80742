"""KEDA's real operator and metrics API server (built by tests/cluster/build.py), run
against a cluster.

The operator watches every namespace with the kubeconfig it is given, polls the
Prometheus triggers of each ScaledObject, and scales their Deployments itself
between zero and one; from one up, the HPA it makes does, reading the triggers
through KEDA's metrics API server (``external.metrics.k8s.io``). That server
runs beside the API server, not in a pod: it is registered as an APIService
whose Service has one endpoint, this machine's own address (the API server
proxies to endpoints, and an endpoint may not be a loopback address).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
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
    binaries = build.keda_binaries()
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
    grpc = f"127.0.0.1:{free_port()}"
    argv = [
        str(binaries / "keda-operator"),
        f"--health-probe-bind-address=127.0.0.1:{probe}",
        f"--metrics-bind-address=127.0.0.1:{free_port()}",
        f"--metrics-service-bind-address={grpc}",
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
            with metrics_api_server(
                kube, binaries / "keda-adapter", kubeconfig, certs, grpc, env, folder
            ):
                yield log
        finally:
            stop_process(proc, timeout=30)


#: KEDA's APIService, and the Service it names (in KEDA's namespace).
METRICS_API = "v1beta1.external.metrics.k8s.io"
METRICS_SERVICE = "keda-metrics-apiserver"


def host_address() -> str:
    """This machine's own IPv4 address that is not a loopback one: where the API server
    can reach a process through an endpoint."""
    for probe in ("192.0.2.1", "10.255.255.255"):  # no packet is sent: only a route is chosen
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((probe, 1))
            address: str = s.getsockname()[0]
            if not ipaddress.ip_address(address).is_loopback:
                return address
    raise RuntimeError("this machine has no IPv4 address besides loopback for an endpoint")


@contextlib.contextmanager
def metrics_api_server(
    kube: Kube,
    binary: Path,
    kubeconfig: Path,
    certs: Path,
    grpc: str,
    env: dict[str, str],
    folder: Path,
) -> Iterator[None]:
    """KEDA's metrics API server, registered with the API server and Available."""
    host, port = host_address(), free_port()
    log = folder / "keda-adapter.log"
    argv = [
        str(binary),
        f"--bind-address={host}",
        f"--secure-port={port}",
        f"--tls-cert-file={certs / 'tls.crt'}",
        f"--tls-private-key-file={certs / 'tls.key'}",
        f"--client-ca-file={certs / 'ca.crt'}",
        f"--cert-dir={certs}",  # also its client key pair for the operator's gRPC service
        f"--metrics-service-address={grpc}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--lister-kubeconfig={kubeconfig}",
        f"--port={free_port()}",  # its own /metrics
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            kube.apply(_service(), KEDA_NAMESPACE)
            kube.apply(_endpoint_slice(host, port), KEDA_NAMESPACE)
            kube.apply(_api_service())
            try:
                kube.wait_for(lambda: proc.poll() is None and _available(kube), timeout=90)
            except AssertionError:
                raise AssertionError(
                    f"KEDA's metrics API server never became Available ({_condition_message(kube)}): "
                    + log.read_text(errors="replace")[-3000:]
                ) from None
            yield
        finally:
            # Unregistered first: an APIService with no server behind it fails discovery
            # for every client of the API server.
            kube.delete("apiservices", None, METRICS_API)
            stop_process(proc, timeout=30)


def _service() -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": METRICS_SERVICE, "namespace": KEDA_NAMESPACE},
        "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
    }


def _endpoint_slice(host: str, port: int) -> dict[str, object]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": METRICS_SERVICE,
            "namespace": KEDA_NAMESPACE,
            "labels": {"kubernetes.io/service-name": METRICS_SERVICE},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [host], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }


def _api_service() -> dict[str, object]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": METRICS_API},
        "spec": {
            "service": {"name": METRICS_SERVICE, "namespace": KEDA_NAMESPACE, "port": 443},
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "insecureSkipTLSVerify": True,
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }


def _conditions(kube: Kube) -> dict[str, dict[str, object]]:
    service = kube.get("apiservices", None, METRICS_API) or {}
    return {c["type"]: c for c in (service.get("status") or {}).get("conditions") or []}


def _available(kube: Kube) -> bool:
    return _conditions(kube).get("Available", {}).get("status") == "True"


def _condition_message(kube: Kube) -> str:
    return str(_conditions(kube).get("Available", {}).get("message", "no condition yet"))
