"""The test control plane: build times (cold and warm) and start-up time.

- warm build: ``python -m tests.cluster.build`` when the binary for this key is
  already in .tools/kube (what every ``make test`` after the first does);
- cold build (``--cold``): the same ``go build`` into a temporary folder with an
  empty Go build cache (the module cache stays: downloads are not counted), as
  on a fresh machine whose modules are already fetched;
- start-up: etcd → kube-apiserver → controller-manager → scheduler → kwok until
  every kwok node is Ready and schedulable and the default ServiceAccount
  exists, then the project's CRDs Established (what the session fixture waits
  for), ``--runs`` times; each component's time is from the start.

Writes bench/out/cluster.json and prints a markdown table.

    python bench/cluster_bench.py [--runs 5] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe, machine  # noqa: E402
from tests.cluster import build  # noqa: E402
from tests.support.cluster import ControlPlane, install_crds, project_crds  # noqa: E402


def warm_build() -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "tests.cluster.build"], cwd=ROOT, check=True, capture_output=True
    )
    return time.monotonic() - started


def cold_build() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GOCACHE": str(Path(tmp) / "gocache")}
        started = time.monotonic()
        subprocess.run(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                build.ldflags(build.kubernetes_version()),
                "-o",
                str(Path(tmp) / "kube"),
                ".",
            ],
            cwd=build.MODULE,
            env={**env, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false"},
            check=True,
        )
        return time.monotonic() - started


def start_once(folder: Path) -> dict[str, float]:
    plane = ControlPlane(build.ensure(), folder)
    started = time.monotonic()
    try:
        plane.start()
        install_crds(plane.kube(), project_crds())
        phases = dict(plane.startup_seconds)
        phases["crds"] = time.monotonic() - started
        return phases
    finally:
        plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="also time a cold build (minutes)")
    args = parser.parse_args()

    report: dict[str, Any] = {"cpu": machine(), "key": build.key(), "go": build.go_version()}
    build.ensure()
    report["warm_build_seconds"] = round(warm_build(), 2)
    if args.cold:
        report["cold_build_seconds"] = round(cold_build(), 1)
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(start_once(Path(tmp) / f"run{i}"))
    report["startup_runs"] = [{k: round(v, 2) for k, v in r.items()} for r in runs]
    report["startup_median"] = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"CPU: {describe(report['cpu'])}")
    print("| what | seconds |\n|---|---:|")
    if "cold_build_seconds" in report:
        print(
            f"| cold build (empty Go build cache, modules fetched) | {report['cold_build_seconds']} |"
        )
    print(f"| warm build (`make cluster` with the binary there) | {report['warm_build_seconds']} |")
    for k, v in report["startup_median"].items():
        print(f"| start-up until {k} ready (median of {args.runs}) | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
