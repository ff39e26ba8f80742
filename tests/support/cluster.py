"""A real Kubernetes control plane for the tests, and a small client for them.

``ControlPlane`` starts etcd, kube-apiserver (static-token auth, RBAC, service
account signing keys), kube-controller-manager, kube-scheduler and kwok, from
the binary ``python -m tests.cluster.build`` makes, each waiting for the one
before to be healthy, and creates kwok's fake nodes:

- ``gpu-a``, ``gpu-b``: 8 ``nvidia.com/gpu`` each, labelled ``nvidia.com/gpu.present=true``
  and tainted ``nvidia.com/gpu:NoSchedule`` (as GPU node pools are);
- ``gpu-tainted``: GPUs too, but tainted ``dedicated=other:NoSchedule``, which no
  workload of ours tolerates;
- ``cpu-a``: no GPUs, no taint.

Every component's log is kept under its folder; ``logs()`` returns their tails,
which a failing test's report carries. ``Kube`` is the client tests use: a
namespace each, create/get/patch/delete on any kind by its plural or Kind, and
``wait_for`` that polls the API server until a predicate holds.

With ``TTS_TEST_KUBECONFIG`` set, tests use that cluster instead of starting
one (docs/testing.md says what it must run).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import functools
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from tests.support.s3 import free_port
from tts_operator.kube import Kind as OperatorKind

ROOT = Path(__file__).resolve().parents[2]
STAGES = ROOT / "tests" / "cluster" / "kwok-stages.yaml"
SERVICE_CIDR = "10.96.0.0/16"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
OTHER_TAINT = {"key": "dedicated", "value": "other", "effect": "NoSchedule"}
# Every kwok node carries these: pods select them to ask kwok for an outcome
# (tests/cluster/kwok-stages.yaml).
HOLD_LABEL = "tts-test.kwok/hold"
EXIT_CODE_LABEL = "tts-test.kwok/exit-code"
# A pod whose nodeSelector names this label stays Pending with its first init container
# running until the test writes its status (kwok-stages.yaml, pod-initializing).
INIT_HOLD_LABEL = "tts-test.kwok/hold-init"
# The containers whose logs kwok serves from a file the test writes.
LOGGED_CONTAINERS = ("sync", "install-flash-attn")

T = TypeVar("T")
Body = dict[str, Any]


# ------------------------------------------------------------------------- certificates


def write_pki(folder: Path) -> dict[str, Path]:
    """A CA, the API server's serving and front-proxy client certificates and the
    service-account key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=7)

    def pem_key(key: Any) -> bytes:
        return bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tts-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common_name: str, key: Any, names: list[x509.GeneralName] | None = None) -> Any:
        """A certificate for ``key``, signed by the CA."""
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    server_key = ec.generate_private_key(ec.SECP256R1())
    service_ip = next(iter(ipaddress.IPv4Network(SERVICE_CIDR).hosts()))
    names: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip)]
    server = issue("kube-apiserver", server_key, names)
    # What the API server shows an aggregated API server (KEDA's metrics) it proxies to.
    proxy_key = ec.generate_private_key(ec.SECP256R1())
    proxy = issue("front-proxy-client", proxy_key)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": pem_key(ca_key),
        "server.crt": server.public_bytes(serialization.Encoding.PEM),
        "server.key": pem_key(server_key),
        "front-proxy-client.crt": proxy.public_bytes(serialization.Encoding.PEM),
        "front-proxy-client.key": pem_key(proxy_key),
        "sa.key": pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    out = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


def kubeconfig(server: str, ca_file: Path | None, token: str, namespace: str = "default") -> Body:
    cluster: Body = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}
        ],
        "current-context": "test",
    }


# ------------------------------------------------------------------------- processes


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{tail(self.log, 40)}"
            )

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


def _healthy(url: str) -> bool:
    return _get(url)[0] == 200


def _established(kube: Kube, name: str) -> bool:
    return (
        _condition(kube.get("customresourcedefinitions", None, name) or {}, "Established") == "True"
    )


def tail(path: Path, lines: int) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _get(url: str, *, token: str | None = None, ca: Path | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = None
    if url.startswith("https"):
        context = (
            ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
        )
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


@dataclass
class ControlPlane:
    """etcd → kube-apiserver → controller-manager → scheduler → kwok, on 127.0.0.1."""

    bin_dir: Path
    folder: Path
    components: list[Component] = field(default_factory=list)
    admin_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    apiserver_port: int = 0
    pki: dict[str, Path] = field(default_factory=dict)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    # Write an audit log of every request (one JSON line each, metadata only).
    audit: bool = False

    def container_log(self, container: str) -> Path:
        """What every container of this name logs (CRI log lines; ``write_container_log``)."""
        if container not in LOGGED_CONTAINERS:
            raise ValueError(f"kwok serves logs of {LOGGED_CONTAINERS} only, not {container}")
        return self.folder / "logs" / "containers" / f"{container}.log"

    @property
    def audit_log(self) -> Path:
        return self.folder / "logs" / "audit.log"

    def pids(self) -> dict[str, int]:
        """Each running component's process id, by name."""
        return {c.name: c.process.pid for c in self.components if c.process is not None}

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig_path(self) -> Path:
        return self.folder / "admin.kubeconfig"

    def logs(self, lines: int = 30) -> str:
        return "\n\n".join(
            f"---- {c.name} ({c.log}) ----\n{tail(c.log, lines)}" for c in self.components
        )

    def _wait(
        self, what: str, check: Callable[[], bool], component: Component, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            component.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not healthy in {timeout}s:\n{tail(component.log, 40)}")
            time.sleep(0.1)

    def start(self, timeout: float = 60.0) -> ControlPlane:
        t0 = time.monotonic()
        self.pki = write_pki(self.folder / "pki")
        exe = self.bin_dir
        logs = self.folder / "logs"

        etcd_port, peer_port = free_port(), free_port()
        etcd = Component(
            "etcd",
            [
                str(exe / "etcd"),
                "--name=test",
                f"--data-dir={self.folder / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            logs / "etcd.log",
        )
        self.components.append(etcd)
        etcd.start()
        self._wait(
            "etcd",
            lambda: _get(f"http://127.0.0.1:{etcd_port}/health")[0] == 200,
            etcd,
            timeout,
        )
        self.startup_seconds["etcd"] = time.monotonic() - t0

        self.apiserver_port = free_port()
        audit_flags: list[str] = []
        if self.audit:
            policy = self.folder / "audit-policy.yaml"
            policy.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "audit.k8s.io/v1",
                        "kind": "Policy",
                        "omitStages": ["RequestReceived"],
                        "rules": [{"level": "Metadata"}],
                    }
                )
            )
            self.audit_log.parent.mkdir(parents=True, exist_ok=True)
            audit_flags = [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=0",
            ]
        tokens = self.folder / "tokens.csv"
        tokens.write_text(f'{self.admin_token},admin,admin,"system:masters"\n')
        apiserver = Component(
            "kube-apiserver",
            [
                str(exe / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={self.pki['server.crt']}",
                f"--tls-private-key-file={self.pki['server.key']}",
                f"--client-ca-file={self.pki['ca.crt']}",
                f"--requestheader-client-ca-file={self.pki['ca.crt']}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                # Aggregated API servers (KEDA's metrics) run beside it, not behind a
                # Service's ClusterIP: proxy to their endpoints, as the front proxy.
                f"--proxy-client-cert-file={self.pki['front-proxy-client.crt']}",
                f"--proxy-client-key-file={self.pki['front-proxy-client.key']}",
                "--enable-aggregator-routing=true",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={self.pki['sa.pub']}",
                f"--service-account-signing-key-file={self.pki['sa.key']}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--endpoint-reconciler-type=none",
                # kwok's nodes serve the kubelet API on 127.0.0.1 (pods/log).
                "--kubelet-preferred-address-types=InternalIP",
                "--allow-privileged=true",
                f"--cert-dir={self.folder / 'pki'}",
                *audit_flags,
            ],
            logs / "kube-apiserver.log",
        )
        self.components.append(apiserver)
        apiserver.start()
        self._wait(
            "kube-apiserver",
            lambda: _get(f"{self.server}/readyz", token=self.admin_token, ca=self.pki["ca.crt"])[0]
            == 200,
            apiserver,
            timeout,
        )
        self.startup_seconds["kube-apiserver"] = time.monotonic() - t0
        self.kubeconfig_path.write_text(
            yaml.safe_dump(kubeconfig(self.server, self.pki["ca.crt"], self.admin_token))
        )

        kc = str(self.kubeconfig_path)
        for name, flags in (
            (
                "kube-controller-manager",
                [
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--leader-elect=false",
                    f"--service-account-private-key-file={self.pki['sa.key']}",
                    f"--root-ca-file={self.pki['ca.crt']}",
                    "--use-service-account-credentials=false",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                ],
            ),
            (
                "kube-scheduler",
                [
                    f"--kubeconfig={kc}",
                    f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}",
                    "--leader-elect=false",
                ],
            ),
        ):
            port = free_port()
            component = Component(
                name,
                [
                    str(exe / name),
                    *flags,
                    "--bind-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--cert-dir={self.folder / name}",
                ],
                logs / f"{name}.log",
            )
            self.components.append(component)
            component.start()
            healthz = f"https://127.0.0.1:{port}/healthz"
            self._wait(
                name,
                functools.partial(_healthy, healthz),
                component,
                timeout,
            )
            self.startup_seconds[name] = time.monotonic() - t0

        # kwok also serves the nodes' kubelet API on 127.0.0.1 (the API server's pods/log
        # goes there): a container named "sync" logs what the test writes to
        # container_log("sync"), and so on for each of LOGGED_CONTAINERS.
        for container in LOGGED_CONTAINERS:
            self.container_log(container).parent.mkdir(parents=True, exist_ok=True)
            self.container_log(container).touch()
        kwok_config = self.folder / "kwok.yaml"
        kwok_config.write_text(
            STAGES.read_text()
            + "\n---\n"
            + yaml.safe_dump(
                {
                    "apiVersion": "kwok.x-k8s.io/v1alpha1",
                    "kind": "ClusterLogs",
                    "metadata": {"name": "sync-logs"},
                    "spec": {
                        "logs": [
                            {"containers": [name], "logsFile": str(self.container_log(name))}
                            for name in LOGGED_CONTAINERS
                        ]
                    },
                }
            )
        )
        kubelet_port = free_port()
        kwok = Component(
            "kwok",
            [
                str(exe / "kwok"),
                f"--kubeconfig={kc}",
                f"--config={kwok_config}",
                "--manage-nodes-with-label-selector=type=kwok",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
                f"--node-port={kubelet_port}",
                f"--server-address=127.0.0.1:{kubelet_port}",
            ],
            logs / "kwok.log",
        )
        self.components.append(kwok)
        kwok.start()
        kube = Kube(self.server, self.admin_token, self.pki["ca.crt"])
        for node in fake_nodes():
            kube.create("nodes", None, node)
        kube.create("storageclasses", None, kwok_storage_class())

        def nodes_ready() -> bool:
            kwok.check_alive()
            ready = [
                n
                for n in kube.list("nodes", None)
                if _condition(n, "Ready") == "True"
                # the node lifecycle controller lifts this once it has seen the node Ready
                and not any(
                    t["key"] == "node.kubernetes.io/not-ready"
                    for t in n["spec"].get("taints") or []
                )
            ]
            return len(ready) == len(fake_nodes())

        self._wait("kwok's nodes", nodes_ready, kwok, timeout)
        kube.wait_for(
            lambda: kube.get("serviceaccounts", "default", "default"),
            timeout=timeout,
            message="the default ServiceAccount (controller-manager)",
        )
        self.startup_seconds["kwok"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()

    def kube(self) -> Kube:
        return Kube(self.server, self.admin_token, self.pki["ca.crt"])


def _condition(obj: Body, type_: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("status"))
    return None


def write_container_log(file: Path, lines: list[str]) -> None:
    """Replace a kwok container log with ``lines``, in the CRI log format kubelets read."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    file.write_text("".join(f"{stamp} stdout F {line}\n" for line in lines))


def fake_nodes() -> list[Body]:
    """The kwok nodes: two GPU nodes, a GPU node tainted for others, a node without GPUs."""

    def node(name: str, gpus: int, labels: dict[str, str], taints: list[Body]) -> Body:
        capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    HOLD_LABEL: "true",
                    EXIT_CODE_LABEL: "2",
                    INIT_HOLD_LABEL: "true",
                    **labels,
                },
                "annotations": {"kwok.x-k8s.io/node": "fake"},
            },
            "spec": {"taints": taints},
            "status": {"capacity": capacity, "allocatable": dict(capacity)},
        }

    gpu = {"nvidia.com/gpu.present": "true"}
    return [
        node("gpu-a", 8, gpu, [GPU_TAINT]),
        node("gpu-b", 8, gpu, [GPU_TAINT]),
        node("gpu-tainted", 8, gpu, [GPU_TAINT, OTHER_TAINT]),
        node("cpu-a", 0, {}, []),
    ]


def kwok_storage_class() -> Body:
    """The default class, provisioned by kwok's pvc-provision stage."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": "kwok-volume",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kwok.x-k8s.io/volume",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }


# ------------------------------------------------------------------------- the client


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        self.status = status
        self.body = body
        self.message = body.get("message", "") if isinstance(body, dict) else str(body)
        super().__init__(f"{what}: {status} {self.message}")


# Where each kind lives: plural -> (group/version, namespaced, Kind).
_BUILTIN: dict[str, tuple[str, bool, str]] = {
    "namespaces": ("v1", False, "Namespace"),
    "nodes": ("v1", False, "Node"),
    "pods": ("v1", True, "Pod"),
    "services": ("v1", True, "Service"),
    "secrets": ("v1", True, "Secret"),
    "configmaps": ("v1", True, "ConfigMap"),
    "events": ("v1", True, "Event"),
    "serviceaccounts": ("v1", True, "ServiceAccount"),
    "persistentvolumeclaims": ("v1", True, "PersistentVolumeClaim"),
    "persistentvolumes": ("v1", False, "PersistentVolume"),
    "deployments": ("apps/v1", True, "Deployment"),
    "replicasets": ("apps/v1", True, "ReplicaSet"),
    "jobs": ("batch/v1", True, "Job"),
    "poddisruptionbudgets": ("policy/v1", True, "PodDisruptionBudget"),
    "horizontalpodautoscalers": ("autoscaling/v2", True, "HorizontalPodAutoscaler"),
    "storageclasses": ("storage.k8s.io/v1", False, "StorageClass"),
    "ingresses": ("networking.k8s.io/v1", True, "Ingress"),
    "customresourcedefinitions": (
        "apiextensions.k8s.io/v1",
        False,
        "CustomResourceDefinition",
    ),
    "roles": ("rbac.authorization.k8s.io/v1", True, "Role"),
    "rolebindings": ("rbac.authorization.k8s.io/v1", True, "RoleBinding"),
    "clusterroles": ("rbac.authorization.k8s.io/v1", False, "ClusterRole"),
    "clusterrolebindings": ("rbac.authorization.k8s.io/v1", False, "ClusterRoleBinding"),
    "ttsendpoints": ("tts.f5tts.dev/v1alpha1", True, "TTSEndpoint"),
    "ttsjobs": ("tts.f5tts.dev/v1alpha1", True, "TTSJob"),
    "servicemonitors": ("monitoring.coreos.com/v1", True, "ServiceMonitor"),
    "scaledobjects": ("keda.sh/v1alpha1", True, "ScaledObject"),
    "endpointslices": ("discovery.k8s.io/v1", True, "EndpointSlice"),
    "apiservices": ("apiregistration.k8s.io/v1", False, "APIService"),
}
_BY_KIND = {kind: plural for plural, (_, _, kind) in _BUILTIN.items()}


def resolve(kind: str) -> tuple[str, str, bool]:
    """(plural, group/version, namespaced) for a plural or a Kind."""
    plural = _BY_KIND.get(kind, kind)
    if plural not in _BUILTIN:
        raise KeyError(f"unknown kind {kind!r}: add it to tests/support/cluster.py")
    gv, namespaced, _ = _BUILTIN[plural]
    return plural, gv, namespaced


def path(kind: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    """The REST path of a kind (plural or Kind), built as the operator builds its own."""
    plural, gv, namespaced = resolve(kind)
    return OperatorKind(gv, plural, namespaced).path(namespace, name, sub)


class Kube:
    """A plain HTTP client of the API server: JSON in, JSON out, errors as ApiError."""

    def __init__(self, server: str, token: str, ca: Path | None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.ca = ca
        self._context = (
            ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
        )

    @classmethod
    def from_kubeconfig(cls, file: Path) -> Kube:
        config = yaml.safe_load(file.read_text())
        context_name = config.get("current-context")
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        ca: Path | None = None
        if cluster.get("certificate-authority"):
            ca = Path(cluster["certificate-authority"])
        elif cluster.get("certificate-authority-data"):
            import base64
            import tempfile

            handle = tempfile.NamedTemporaryFile(suffix=".crt", delete=False)  # noqa: SIM115
            handle.write(base64.b64decode(cluster["certificate-authority-data"]))
            handle.close()
            ca = Path(handle.name)
        if not user.get("token"):
            raise ValueError(f"{file}: the tests need a user with a bearer token")
        return cls(cluster["server"], user["token"], ca)

    def request(
        self,
        method: str,
        url_path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> Any:
        url = self.server + url_path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._context) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail: Any = json.loads(raw)
            except ValueError:
                detail = raw.decode(errors="replace")
            raise ApiError(e.code, detail, f"{method} {url_path}") from None
        return json.loads(raw) if raw else None

    # -- verbs ---------------------------------------------------------------------------

    def get(self, kind: str, namespace: str | None, name: str) -> Body | None:
        try:
            result: Body = self.request("GET", path(kind, namespace, name))
            return result
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None, selector: str | None = None) -> list[Body]:
        query = {"labelSelector": selector} if selector else None
        result = self.request("GET", path(kind, namespace), query=query)
        return list(result.get("items") or [])

    def create(self, kind: str, namespace: str | None, body: Body) -> Body:
        plural, gv, _ = resolve(kind)
        body = {"apiVersion": gv, "kind": _BUILTIN[plural][2], **body}
        result: Body = self.request("POST", path(kind, namespace), body)
        return result

    def apply(self, body: Body, namespace: str | None = None) -> Body:
        """Create, or replace what differs (server-side apply, field manager ``tests``)."""
        kind = body["kind"]
        name = body["metadata"]["name"]
        _, _, namespaced = resolve(kind)
        ns = (body["metadata"].get("namespace") or namespace) if namespaced else None
        result: Body = self.request(
            "PATCH",
            path(kind, ns, name),
            body,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": "tests", "force": "true"},
        )
        return result

    def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Body,
        *,
        subresource: str | None = None,
    ) -> Body:
        """A JSON merge patch (RFC 7386)."""
        result: Body = self.request(
            "PATCH",
            path(kind, namespace, name, subresource),
            patch,
            content_type="application/merge-patch+json",
        )
        return result

    def patch_status(self, kind: str, namespace: str | None, name: str, status: Body) -> Body:
        return self.patch(kind, namespace, name, {"status": status}, subresource="status")

    def delete(
        self, kind: str, namespace: str | None, name: str, *, propagation: str = "Background"
    ) -> bool:
        try:
            self.request("DELETE", path(kind, namespace, name), {"propagationPolicy": propagation})
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def events(self, namespace: str) -> builtins.list[Body]:
        return self.list("events", namespace)

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A bound token of a ServiceAccount (TokenRequest), as a pod would get."""
        result = self.request(
            "POST",
            path("serviceaccounts", namespace, name, "token"),
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return str(result["status"]["token"])

    def as_token(self, token: str) -> Kube:
        return Kube(self.server, token, self.ca)

    def kubeconfig(self, namespace: str = "default") -> Body:
        return kubeconfig(self.server, self.ca, self.token, namespace)

    def write_kubeconfig(self, file: Path, namespace: str = "default") -> Path:
        file.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        return file

    # -- waiting -------------------------------------------------------------------------

    def wait_for(
        self,
        predicate: Callable[[], T | None | Literal[False]],
        timeout: float = 30.0,
        message: str = "",
    ) -> T:
        """The predicate's first truthy value, re-checked every 0.1 s; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {message or predicate!r}; last value: {value!r}"
                )
            time.sleep(0.1)

    def wait_gone(self, kind: str, namespace: str | None, name: str, timeout: float = 60.0) -> None:
        self.wait_for(
            lambda: self.get(kind, namespace, name) is None,
            timeout,
            f"{kind} {namespace}/{name} to be gone",
        )


# ------------------------------------------------------------------------- namespaces


@contextlib.contextmanager
def namespace(kube: Kube, name: str) -> Iterator[str]:
    """A namespace for one test, deleted (without waiting) after it."""
    kube.create("namespaces", None, {"metadata": {"name": name}})
    try:
        kube.wait_for(
            lambda: kube.get("serviceaccounts", name, "default"),
            message=f"the default ServiceAccount of {name}",
        )
        yield name
    finally:
        with contextlib.suppress(ApiError):
            kube.delete("namespaces", None, name)


def install_crds(kube: Kube, crds: list[Body], timeout: float = 60.0) -> None:
    """Apply CRDs and wait until the API server serves them (Established)."""
    for crd in crds:
        kube.apply(crd)
    for crd in crds:
        name = crd["metadata"]["name"]
        kube.wait_for(
            functools.partial(_established, kube, name),
            timeout,
            f"CRD {name} Established",
        )


def build_dir() -> Path:
    """The control plane binaries, built when missing (tests/cluster/build.py)."""
    from tests.cluster import build

    return build.ensure()


def go_available() -> bool:
    return shutil.which("go") is not None


@dataclass(frozen=True)
class ClusterHandle:
    """What the session fixture hands tests: the admin client and its kubeconfig."""

    kube: Kube
    kubeconfig: Path
    plane: ControlPlane | None


def project_crds() -> list[Body]:
    return [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
