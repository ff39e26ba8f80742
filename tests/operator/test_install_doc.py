"""docs/install.md, walked step by step from its own code blocks on the test control plane.

Every shell command in the doc is matched to a step below, in the doc's order;
a command no step knows fails the walk, so the doc cannot change without this
test following it. Each step runs the command as written where this machine
can (helm, kubectl, tts-inference publish), and otherwise says why not and
checks what it can instead:

- the bucket is moto's on 127.0.0.1, named ``my-tts-bucket`` as in examples/;
  the doc's placeholders (``<key id>``, ``<bucket>``, the B2 URL) get its values;
- the hub is tests/support/fake_hub.py with SWivid/F5-TTS's and
  charactr/vocos-mel-24khz's exact files, holding a tiny model's weights, so
  publish gets ``--model-config`` naming that tiny arch;
- the operator runs in this process with a token of the ServiceAccount the
  doc's ``helm install`` made (its own pod is kwok's, on a fake node);
- kwok plays the GPU nodes; where a step needs audio, the commands of the pods
  the operator made (the cache Job's sync, the server's init containers and
  ``serve``) run here on the bucket, paths mapped to a folder of the test;
- the steps that need what this machine lacks (a Docker engine, a kubelet to
  run ``helm test``'s pod, a port-forward to a pod with no process) are named
  and skipped; the uninstall's cluster-wide deletes are scoped to the doc's
  namespace, as other tests share the cluster.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import kopf
import pytest
import yaml

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.chart import helm
from tests.conftest import require_tool
from tests.operator.conftest import use_kubeconfig
from tests.support.cluster import ClusterHandle, Kube
from tests.support.fake_hub import f5_hub_files, fake_hub, hub_environment, vocos_hub_files
from tests.support.operator_runner import OperatorRunner
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, S3Server, free_port
from tests.support.server import Server, start_server, stop
from tts_inference import audio
from tts_operator import config
from tts_operator import constants as c
from tts_operator import main as operator_main

__all__ = ["operator_main"]
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"
BIN = Path(sys.executable).parent
BUCKET = "my-tts-bucket"  # the examples' own bucket name
NAMESPACE = "tts"
RELEASE_NAMESPACE = "tts-system"
Obj = dict[str, Any]


@dataclass
class Block:
    section: str
    lang: str
    text: str


def blocks(doc: str) -> list[Block]:
    """The fenced code blocks, in order, each with the heading it is under."""
    out: list[Block] = []
    section = ""
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = re.match(r"^(\s*)```(\w*)\s*$", line)
        if fence:
            indent, lang, body = fence.group(1), fence.group(2), []
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i][len(indent) :])
                i += 1
            out.append(Block(section, lang, "\n".join(body)))
        i += 1
    return out


def commands(text: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and `&` dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for raw in joined.splitlines():
        line = re.sub(r"\s+#\s.*$", "", raw).strip()
        if line and not line.startswith("#"):
            out.append(line.removesuffix("&").strip())
    return out


@dataclass
class Walk:
    kube: Kube
    cluster: ClusterHandle
    s3: S3Server
    hub_env: dict[str, str]
    tiny_config: Path
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    operator: OperatorRunner | None = None
    server: Server | None = None
    installed: bool = False

    # -- running commands as written --------------------------------------------------

    def placeholders(self, command: str) -> str:
        for old, new in (
            ("https://s3.<region>.backblazeb2.com", self.s3.endpoint),
            ("<key id>", ACCESS_KEY),
            ("<application key>", SECRET_KEY),
            ("<region>", "us-east-1"),
            ("<bucket>", BUCKET),
        ):
            command = command.replace(old, new)
        return command

    def run(self, command: str, *extra: str, env: dict[str, str] | None = None) -> str:
        argv = [*shlex.split(self.placeholders(command)), *extra]
        tools = {"helm": helm.helm(), "kubectl": require_tool("kubectl")}
        argv[0] = tools.get(argv[0], str(BIN / argv[0]) if argv[0] == "tts-inference" else argv[0])
        proc = subprocess.run(
            argv,
            # ``env`` is a whole environment (the bucket's, or the hub's without HF_HUB_OFFLINE).
            env={
                **(os.environ if env is None else env),
                "KUBECONFIG": str(self.cluster.kubeconfig),
            },
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        self.ran.append(command)
        return proc.stdout

    def skip(self, command: str, why: str) -> None:
        self.skipped.append(f"{command[:60]}: {why}")

    # -- the steps ----------------------------------------------------------------------

    def docker(self, command: str) -> None:
        if command.startswith("docker build"):
            dockerfile = shlex.split(command)[shlex.split(command).index("-f") + 1]
            assert (ROOT / dockerfile).is_file(), f"{command}: no {dockerfile}"
        self.skip(command, "no Docker engine here; the chart is given the images' names")

    def helm_install(self, command: str) -> None:
        if "..." in command:
            self.other_mode(command)
            return
        self.run(command)
        self.installed = True

    def rollout_status(self, command: str) -> None:
        self.run(command, "--timeout=120s")

    def helm_test(self, command: str) -> None:
        self.skip(command, "its test pod needs a kubelet to run its container")

    def create_namespace(self, command: str) -> None:
        self.run(command)
        self.kube.wait_for(
            lambda: self.kube.get("serviceaccounts", NAMESPACE, "default"),
            message="the default ServiceAccount of the namespace",
        )

    def create_secret(self, command: str) -> None:
        self.run(command)

    def publish(self, command: str) -> None:
        # The hub's folder holds tiny weights in F5TTS_v1_Base's layout: name their arch.
        self.run(command, "--model-config", str(self.tiny_config), env=self.hub_env)
        self.apply_examples()

    def apply_examples(self) -> None:
        """The examples' TTSEndpoint as the doc's steps leave it; the operator makes it Ready."""
        self.start_operator()
        endpoint = _example("10-ttsendpoint.yaml")
        doc_placement = yaml.safe_load(
            next(b.text for b in blocks(DOC.read_text()) if b.lang == "yaml")
        )
        assert {k: endpoint["spec"][k] for k in doc_placement} == doc_placement, (
            "the doc's nodeSelector and tolerations are the example's"
        )
        self.kube.create("ttsendpoints", NAMESPACE, endpoint)
        self.kube.wait_for(
            lambda: self.status("ttsendpoints", "f5tts").get("phase") == "Ready",
            timeout=120,
            message="the example TTSEndpoint never became Ready",
        )
        self.start_server()

    def start_operator(self) -> None:
        account = f"{RELEASE_NAMESPACE}/tts-operator"
        token = self.kube.service_account_token(RELEASE_NAMESPACE, "tts-operator")
        kubeconfig = self.kube.as_token(token).write_kubeconfig(self.tmp / "operator.kubeconfig")
        use_kubeconfig(self.monkeypatch, kubeconfig)
        self.server_port = free_port()
        settings = config.Settings(
            namespaces=(NAMESPACE,),
            endpoint_url_template=f"http://127.0.0.1:{self.server_port}",
        )
        self.operator = OperatorRunner(
            namespaces=[NAMESPACE], memo=kopf.Memo(settings=settings)
        ).start()
        self.ran.append(f"the operator, as {account}")

    def start_server(self) -> None:
        """The commands of the pods the operator made, run here on the bucket."""
        (job,) = self.kube.list("jobs", NAMESPACE, f"{c.LABEL_COMPONENT}={c.COMPONENT_CACHE}")
        deployment = self.kube.get("deployments", NAMESPACE, "f5tts")
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        env = {**self.s3.env(), "HF_HUB_OFFLINE": "1"}
        for container in [*job["spec"]["template"]["spec"]["containers"], *pod["initContainers"]]:
            self.run(shlex.join(self.local(container["command"])), env=env)
        (server,) = pod["containers"]
        env |= {e["name"]: e["value"] for e in server["env"] if "value" in e}
        argv = self.local(server["command"])
        assert argv[:3] == ["tts-inference", "serve", "--model-dir"]
        rest = argv[4:]
        port = rest.index("--port")
        del rest[port : port + 2]  # start_server listens on the port the operator was given
        self.server = start_server(
            Path(argv[3]), self.tmp / "serve.log", *rest, env=env, port=self.server_port
        )
        self.ran.append("the cache Job's and the server pod's commands")

    def local(self, argv: list[str]) -> list[str]:
        """A pod's command with its mounts mapped to this test's folders."""
        mounts = {c.CACHE_MOUNT: self.tmp / "cache", c.RUN_MOUNT: self.tmp / "run"}
        out = []
        for arg in argv:
            mapped = str(self.tmp / "termination-log") if arg == "/dev/termination-log" else arg
            for mount, local in mounts.items():
                if arg == mount or arg.startswith(mount + "/"):
                    local.mkdir(parents=True, exist_ok=True)
                    mapped = str(local) + arg[len(mount) :]
            out.append(mapped)
        return out

    def get_resources(self, command: str) -> None:
        out = self.run(command)
        kind = "ttsjobs" if "ttsjobs" in command else "ttsendpoints"
        word = "Succeeded" if kind == "ttsjobs" else "Ready"
        assert word in out, out

    def port_forward(self, command: str) -> None:
        self.skip(command, "the pod is kwok's; the server its commands started stands in")

    def curl_readyz(self, command: str) -> None:
        assert self.server is not None
        resp = httpx.get(f"{self.server.url}/readyz", timeout=10)
        assert resp.status_code == 200
        assert resp.json()["status"] == "ready"
        self.ran.append(command)

    def apply_job(self, command: str) -> None:
        self.run(command)
        status = self.kube.wait_for(
            lambda: (s := self.status("ttsjobs", "hello-on-endpoint")).get("phase")
            in ("Succeeded", "Failed")
            and s,
            timeout=180,
            message="the example TTSJob never finished",
        )
        assert status["phase"] == "Succeeded", status
        key = "outputs/default/hello-on-endpoint.wav"
        data = self.s3.client(direct=True).get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert len(audio.decode(data)) > 24000 // 2

    def delete_resources(self, command: str) -> None:
        # -A would reach other tests' resources on this shared cluster: the doc's namespace.
        self.run(command.replace(" -A", f" -n {NAMESPACE}"), "--timeout=120s")
        assert self.kube.list("ttsjobs", NAMESPACE) == []
        assert self.kube.list("ttsendpoints", NAMESPACE) == []

    def helm_uninstall(self, command: str) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None
        self.run(command)
        self.installed = False

    def other_mode(self, command: str) -> None:
        self.skip(command, "the namespaced install, walked by test_helm_install.py")

    def delete_crds(self, command: str) -> None:
        self.skip(command, "the CRDs serve the other tests of this cluster")

    def drop_finalizers(self, command: str) -> None:
        self.skip(command, "the recovery for an operator uninstalled first; not needed above")

    def status(self, kind: str, name: str) -> Obj:
        return dict((self.kube.get(kind, NAMESPACE, name) or {}).get("status") or {})

    def python_block(self, text: str) -> None:
        """The doc's openai program, with only its base URL pointed at the server."""
        assert self.server is not None
        program = text.replace("http://localhost:8000/v1", f"{self.server.url}/v1")
        assert program != text, "the doc's client no longer points at the port-forward"
        subprocess.run([sys.executable, "-c", program], cwd=self.tmp, check=True, timeout=300)
        out = self.tmp / "it-works.wav"
        assert len(audio.decode(out.read_bytes())) > 24000 // 4
        self.ran.append("the openai program")


STEPS: list[tuple[str, Callable[[Walk, str], None]]] = [
    (r"^docker (build|push) ", Walk.docker),
    (r"^helm install ", Walk.helm_install),
    (r"^kubectl -n \S+ rollout status ", Walk.rollout_status),
    (r"^helm test ", Walk.helm_test),
    (r"^kubectl create namespace ", Walk.create_namespace),
    (r"^kubectl -n \S+ create secret generic ", Walk.create_secret),
    (r"^tts-inference publish ", Walk.publish),
    (r"^kubectl -n \S+ get (ttsendpoints|ttsjobs)$", Walk.get_resources),
    (r"^kubectl -n \S+ port-forward ", Walk.port_forward),
    (r"^curl -s localhost:8000/readyz$", Walk.curl_readyz),
    (r"^kubectl -n \S+ apply -f examples/20-ttsjob-on-endpoint.yaml$", Walk.apply_job),
    (r"^kubectl delete ttsjobs,ttsendpoints ", Walk.delete_resources),
    (r"^helm uninstall ", Walk.helm_uninstall),
    (r"^kubectl delete crd ", Walk.delete_crds),
    (r"^kubectl apply --server-side -f charts/tts-operator/crds/$", Walk.other_mode),
    (r"^kubectl get ttsjobs,ttsendpoints -A -o name \| xargs ", Walk.drop_finalizers),
]


def _example(name: str) -> Obj:
    doc = yaml.safe_load((ROOT / "examples" / name).read_text())
    assert isinstance(doc, dict)
    return doc


def _inline_commands(doc: str) -> list[str]:
    """Commands the doc gives inline: `kubectl ... apply -f examples/...` and `kubectl get ...`."""
    return re.findall(r"`(kubectl -n \S+ (?:apply -f examples/\S+|get ttsjobs))`", doc)


@pytest.fixture
def walk(
    kube: Kube,
    control_plane: ClusterHandle,
    s3: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Walk]:
    from tts_inference.tiny_model import TINY_ARCH, f5_config, make_model

    require_tool("ffmpeg")
    require_tool("kubectl")
    tiny = make_model(tmp_path / "tiny")
    tiny_config = tmp_path / "tiny-F5TTS_v1_Base.yaml"
    tiny_config.write_text(yaml.safe_dump(f5_config("F5TTS_v1_Base", TINY_ARCH, "DiT")))
    client = s3.client(direct=True)
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    with fake_hub() as hub:
        repo, files = f5_hub_files("F5TTS_v1_Base", tiny)
        hub.add_commit(repo, files)
        hub.add_commit("charactr/vocos-mel-24khz", vocos_hub_files(tiny))
        (tmp_path / "tmp").mkdir()
        hub_env = hub_environment(s3.env(), hub, tmp_path / "hf-home", tmp_path / "tmp")
        w = Walk(kube, control_plane, s3, hub_env, tiny_config, tmp_path, monkeypatch)
        try:
            yield w
        finally:
            if w.operator is not None:
                w.operator.stop()
            if w.server is not None:
                stop(w.server)
            if w.installed:
                w.run(f"helm uninstall tts-operator -n {RELEASE_NAMESPACE}")
            for name in (NAMESPACE, RELEASE_NAMESPACE):
                kube.delete("namespaces", None, name)


def test_install_md_walks_from_helm_install_to_a_spoken_job_and_back(walk: Walk) -> None:
    doc = DOC.read_text()

    def do(command: str) -> None:
        step = next((fn for pattern, fn in STEPS if re.search(pattern, command)), None)
        assert step is not None, f"install.md has a command the walk does not know: {command}"
        step(walk, command)

    for block in blocks(doc):
        if block.lang == "python" and block.section == "Check it works":
            walk.python_block(block.text)
            # The prose after it: apply the example TTSJob, then get it.
            for command in _inline_commands(doc):
                do(command)
        elif block.lang == "sh":
            for command in commands(block.text):
                do(command)
        # yaml blocks: the placement is checked against the example; the route is config.
    print(json.dumps({"ran": walk.ran, "skipped": walk.skipped}, indent=1))
    assert walk.ran[0].startswith("helm install")
    for needed in ("the openai program", "the cache Job's and the server pod's commands"):
        assert needed in walk.ran
    assert any(r.startswith("kubectl delete ttsjobs,ttsendpoints") for r in walk.ran)
