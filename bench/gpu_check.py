"""The GPU check: one call on a lent GPU machine gives every GPU figure the project asks for.

Steps, each bounded in time (150 + 60 + 270 s at most), all in one run, under 8
minutes on an H100, and a fifth in whatever is left of the 8 minutes:

1. environment: Python, torch, CUDA, the GPU; every wheel of bench/gpu_wheels.txt
   installed at its version;
2. the gpu-marked tests (full-size bfloat16/float16 load and synthesis,
   flash_attn where it imports);
3. the host syncs of one full-size batch of 3 at the server's defaults, once
   and at each ODE step (bench/host_syncs.py: 0 a step is the goal);
4. the full-size server at its defaults against f5-tts's ``F5TTS.infer`` at 32
   steps, at concurrency 1, 4 and 16 (bench/server_bench.py): throughput,
   p50 and p95, time to the first audio byte of a stream, warm start, and the
   GPU memory the server holds;
5. what torch.compile buys one full-size DiT block in bfloat16 on the GPU, and
   its compile time (bench/compile_bench.py), when at least ``COMPILE_LEAST``
   seconds of the 8 minutes are left; skipped, and said so, otherwise.

It writes ``gpu-check.json`` and ``gpu-check.md`` (a table for
docs/benchmarks.md) to ``--out``. ``--dry-run`` runs every step on the CPU
with the tiny model and a few steps instead (the test suite does, so the script
cannot rot before a GPU is lent).

On the device, from the repository root, with the wheels carried in .whl
(``python bench/gpu_wheels.py --download .whl`` here first)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \\
        --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:inference:operator:.
    python3 bench/gpu_check.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_wheels import WHEELS, canonical  # noqa: E402

#: (size, nfe_step, device, requests per level, levels, baseline calls, seconds allowed)
FULL = ("full", 32, "cuda", 16, "1,4,16", 6, 270)
DRY = ("tiny", 2, "cpu", 2, "1,4", 1, 300)
#: The whole check's bound (seconds): the optional compile step gets what is left of it.
TOTAL_SECONDS = 480
#: The compile step runs only with this many seconds left.
COMPILE_LEAST = 60
#: (size, device, dtype, rounds) of the compile step.
COMPILE_FULL = ("full", "cuda", "bfloat16", 12)
COMPILE_DRY = ("tiny", "cpu", "float32", 3)
#: The dry run's compile step is bounded alone (a CPU check has no 8 minutes to keep).
COMPILE_DRY_SECONDS = 300


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    missing = []
    for line in WHEELS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            try:
                found = metadata.version(name)
            except metadata.PackageNotFoundError:
                found = None
            if found is None or canonical(found) != canonical(version):
                missing.append(f"{name}=={version} (found {found})")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "wheels_not_installed": missing,
    }


def _run(command: list[str], timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        partial = [
            s.decode(errors="replace") if isinstance(s, bytes) else s or ""
            for s in (exc.stdout, exc.stderr)
        ]
        code, out = -1, f"timed out after {timeout:.0f} s: {''.join(partial)}"
    return {
        "command": " ".join(command),
        "returncode": code,
        "seconds": round(time.monotonic() - started, 1),
        "tail": out[-3000:],
    }


def _run_bench(program: str, args: list[str], report: Path, timeout: float) -> dict[str, Any]:
    """Run ``bench/<program>`` with ``--out report``; its JSON report, if written, rides along."""
    step = _run([sys.executable, f"bench/{program}", *args, "--out", str(report)], timeout)
    if report.exists():
        step["report"] = json.loads(report.read_text())
    return step


def gpu_tests(dry_run: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    if dry_run:
        command.append("--collect-only")  # no device here: the tests must at least collect
    return _run([*command, "tests/inference/test_engine_f5.py"], 150)


def host_syncs(out: Path, dry_run: bool) -> dict[str, Any]:
    size, _, device, *_ = DRY if dry_run else FULL
    return _run_bench(
        "host_syncs.py",
        [
            *("--size", size, "--device", device, "--dtype", "float32" if dry_run else "auto"),
            *("--items", "3"),
        ],
        out / "host-syncs.json",
        60,
    )


def server(out: Path, dry_run: bool) -> dict[str, Any]:
    size, nfe, device, requests, levels, calls, limit = DRY if dry_run else FULL
    return _run_bench(
        "server_bench.py",
        [
            *("--size", size, "--nfe-step", str(nfe), "--device", device),
            *("--requests", str(requests), "--levels", levels),
            *("--baseline-calls", str(calls)),
        ],
        out / "server.json",
        limit,
    )


def compile_gain(out: Path, dry_run: bool, seconds_left: float) -> dict[str, Any]:
    if seconds_left < COMPILE_LEAST and not dry_run:
        return {"skipped": f"{seconds_left:.0f} s left of {TOTAL_SECONDS} s", "returncode": 0}
    size, device, dtype, rounds = COMPILE_DRY if dry_run else COMPILE_FULL
    return _run_bench(
        "compile_bench.py",
        [*("--size", size, "--device", device, "--dtype", dtype), *("--rounds", str(rounds))],
        out / "compile.json",
        COMPILE_DRY_SECONDS if dry_run else seconds_left,
    )


def table(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"GPU check on {env['gpu'] or 'the CPU (dry run)'}, torch {env['torch']}, "
        f"CUDA {env['cuda']}, Python {env['python']}",
        "",
        f"- gpu-marked tests: exit {result['tests']['returncode']} "
        f"in {result['tests']['seconds']} s",
    ]
    syncs = result["host_syncs"].get("report")
    if syncs is None:
        lines.append(f"- host syncs: not counted (exit {result['host_syncs']['returncode']})")
    else:
        lines.append(
            f"- host syncs of a batch of {syncs['items']} ({syncs['engine']['attn_backend']} "
            f"attention): {syncs['per_step']:g} an ODE step, {syncs['per_batch']:g} a batch"
        )
    compiled = result["compile"]
    if "skipped" in compiled:
        lines.append(f"- torch.compile of a DiT block: not measured ({compiled['skipped']})")
    elif (gain := compiled.get("report")) is None:
        lines.append(f"- torch.compile of a DiT block: no figures (exit {compiled['returncode']})")
    else:
        lines.append(
            f"- torch.compile of a DiT block ({gain['size']}, {gain['dtype']}, "
            f"{gain['frames']} frames): {gain['eager_ms']['best']:.1f} ms eager, "
            f"{gain['compiled_ms']['best']:.1f} ms compiled ({gain['speedup_best']:.2f}x), "
            f"compile {gain['compile_seconds']:.0f} s, largest difference "
            f"{gain['max_abs_difference']:.2g} of a peak {gain['output_peak']:.2g}"
        )
    report = result["server"].get("report")
    if report is None:
        lines.append(f"- server: no figures (exit {result['server']['returncode']})")
        return "\n".join(lines) + "\n"
    base = report["baseline"]
    lines += [
        f"- server at its defaults ({report['server_build_info']})",
        f"- warm start {report['warm_start_seconds']:.1f} s; first audio byte of a stream "
        f"{report['streaming'].get('first_byte_seconds', 0):.2f} s; GPU memory held "
        f"{(report.get('gpu_memory_bytes') or 0) / 2**30:.1f} GiB",
        "",
        "| concurrency | server audio s / wall s | F5TTS.infer | ratio | p50 | p95 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for level in report["levels"]:
        lines.append(
            f"| {level['concurrency']} | {level['throughput']:.2f} | {base['throughput']:.2f} "
            f"| {level['throughput'] / base['throughput']:.2f}x | {level['p50']:.2f} s "
            f"| {level['p95']:.2f} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true", help="the CPU and the tiny model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result: dict[str, Any] = {"dry_run": args.dry_run, "environment": environment()}
    print(json.dumps(result["environment"]), flush=True)
    result["tests"] = gpu_tests(args.dry_run)
    print(f"tests: exit {result['tests']['returncode']}", flush=True)
    result["host_syncs"] = host_syncs(args.out, args.dry_run)
    print(f"host syncs: exit {result['host_syncs']['returncode']}", flush=True)
    result["server"] = server(args.out, args.dry_run)
    print(f"server: exit {result['server']['returncode']}", flush=True)
    left = TOTAL_SECONDS - (time.monotonic() - started)
    result["compile"] = compile_gain(args.out, args.dry_run, left)
    print(f"compile: exit {result['compile']['returncode']}", flush=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2))
    (args.out / "gpu-check.md").write_text(table(result))
    print(table(result), flush=True)
    failed = (
        result["environment"]["wheels_not_installed"] and not args.dry_run,
        result["tests"]["returncode"] != 0,
        result["host_syncs"]["returncode"] != 0,
        result["server"]["returncode"] != 0,
        # On the device the compile step is extra: its failure is a finding (in the
        # table), not a failed check; the dry run must show that it works.
        result["compile"]["returncode"] != 0 and args.dry_run,
    )
    return 1 if any(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
