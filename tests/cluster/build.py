"""Build the test control plane once per machine: ``python -m tests.cluster.build``.

One binary (tests/cluster/kube/main.go) runs as kube-apiserver,
kube-controller-manager, kube-scheduler, etcd or kwok, by the name it is started
under. It lands in ``.tools/kube/<key>/`` with one link per name; the key covers
the pinned versions, go.sum and main.go, so a second run builds nothing and a
version change builds a new one beside the old.

KEDA's operator and metrics API server (tests/cluster/keda/go.mod) land the
same way in ``.tools/keda/<key>/``, and KEDA's CRDs beside them.

Prints the folders. ``--print-key`` prints the control plane's key only (no build).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = Path(__file__).resolve().parent / "kube"
TOOLS = ROOT / ".tools" / "kube"
NAMES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kwok")
# KEDA's operator and its CRDs, from its Go module (fetched and checksum-verified by go):
# the operator's ScaledObjects are validated against KEDA's schema by the test API
# server, and the real KEDA operator scales from them.
KEDA_MODULE = Path(__file__).resolve().parent / "keda"
KEDA_TOOLS = ROOT / ".tools" / "keda"
#: The binaries built from KEDA's module, by the name each lands under.
KEDA_BINARIES = {"keda-operator": "cmd/operator", "keda-adapter": "cmd/adapter"}
KEDA_PACKAGE = "github.com/kedacore/keda/v2"
KEDA_CRDS = "config/crd/bases"
KEDA_CRD = f"{KEDA_CRDS}/keda.sh_scaledobjects.yaml"


def pinned(module: str, folder: Path = MODULE) -> str:
    """The version ``folder``'s go.mod requires of ``module``."""
    text = (folder / "go.mod").read_text()
    match = re.search(rf"^\s*{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise SystemExit(f"{module} is not required in {folder / 'go.mod'}")
    return match.group(1)


KEDA = pinned(KEDA_PACKAGE, KEDA_MODULE)


def kubernetes_version() -> str:
    return pinned("k8s.io/kubernetes")


def key() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((MODULE / name).read_bytes())
    return (
        f"{kubernetes_version()}-etcd{pinned('go.etcd.io/etcd/server/v3')}"
        f"-kwok{pinned('sigs.k8s.io/kwok')}-{digest.hexdigest()[:10]}"
    )


def folder() -> Path:
    return TOOLS / key()


def ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    stamp = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = " ".join(f"-X k8s.io/component-base/version.{k}={v}" for k, v in stamp.items())
    return f"-s -w {flags}"


def go_build(module: Path, out: Path, binaries: dict[str, str], flags: str) -> float:
    """``go build`` each package of ``module`` into ``out/<binary>`` (written to a temporary
    folder, then renamed; other builds beside ``out`` are removed): seconds taken."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit(f"go is not installed: {', '.join(binaries)} are built from Go modules")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    for binary, package in binaries.items():
        subprocess.run(
            [go, "build", "-trimpath", "-ldflags", flags, "-o", str(tmp / binary), package],
            cwd=module,
            env=env,
            check=True,
        )
    seconds = time.monotonic() - started
    (tmp / "build.json").write_text(
        json.dumps({"key": out.name, "seconds": round(seconds, 1), "go": go_version()}) + "\n"
    )
    tmp.rename(out)
    for old in out.parent.iterdir():
        if old != out and old.is_dir():
            shutil.rmtree(old)  # an earlier version's build: nothing uses it any more
    return seconds


def build(out: Path) -> float:
    """Build the control plane into ``out``: seconds taken."""
    seconds = go_build(MODULE, out, {"kube": "."}, ldflags(kubernetes_version()))
    for name in NAMES:
        (out / name).symlink_to("kube")
    return seconds


def go_version() -> str:
    return subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()


def ensure() -> Path:
    """The built folder, building it first when this key has none."""
    out = folder()
    if not (out / "kube").exists():
        seconds = build(out)
        print(f"built the test control plane in {seconds:.0f}s: {out}", file=sys.stderr)
    return out


def keda_crds() -> Path:
    """The folder of KEDA's CRDs at the pinned version, copied once into .tools/."""
    out = ROOT / ".tools" / f"keda-{KEDA}"
    if (out / Path(KEDA_CRD).name).exists():
        return out
    proc = subprocess.run(
        ["go", "mod", "download", "-json", f"{KEDA_PACKAGE}@{KEDA}"],
        capture_output=True,
        text=True,
        cwd=KEDA_MODULE,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    info = json.loads(proc.stdout or "{}")
    if not info.get("Dir"):
        raise SystemExit(f"go mod download {KEDA_PACKAGE}@{KEDA} failed: {proc.stderr}")
    out.mkdir(parents=True, exist_ok=True)
    for crd in sorted((Path(info["Dir"]) / KEDA_CRDS).glob("*.yaml")):
        shutil.copyfile(crd, out / crd.name)
    return out


def keda_crd() -> Path:
    """KEDA's ScaledObject CRD at the pinned version."""
    return keda_crds() / Path(KEDA_CRD).name


def keda_key() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((KEDA_MODULE / name).read_bytes())
    return f"keda{KEDA}-{digest.hexdigest()[:10]}"


def keda_binaries() -> Path:
    """The folder of KEDA's operator and metrics API server at the pinned version, built
    once per key."""
    out = KEDA_TOOLS / keda_key()
    if all((out / binary).exists() for binary in KEDA_BINARIES):
        return out
    stamp = f"-s -w -X {KEDA_PACKAGE}/version.Version={KEDA}"
    packages = {binary: f"{KEDA_PACKAGE}/{cmd}" for binary, cmd in KEDA_BINARIES.items()}
    seconds = go_build(KEDA_MODULE, out, packages, stamp)
    print(f"built KEDA's operator and metrics API server in {seconds:.0f}s: {out}", file=sys.stderr)
    return out


def main(argv: list[str]) -> int:
    if argv[1:] == ["--print-key"]:
        print(key())
        return 0
    if shutil.which("go") is None and not os.environ.get("CI"):
        print(
            "go is not installed: the tests that need the control plane will skip "
            "(under CI they fail)",
            file=sys.stderr,
        )
        return 0
    print(ensure())
    print(keda_crds())
    print(keda_binaries())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
