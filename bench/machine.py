"""The machine a figure was measured on: CPU model and the flags that decide speed."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

#: The instruction sets that change what is fastest for this model on a CPU.
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


#: Environment variables that keep torch, MKL, oneDNN and FBGEMM below the CPU's own
#: instruction sets (set all of them to AVX2 to run AVX2 code paths on an AVX-512 CPU).
ISA_LIMITS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_MAX_CPU_ISA",
    "FBGEMM_ENABLE_INSTRUCTIONS",
)


def machine() -> dict[str, Any]:
    model, flags = "", list[str]()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].split()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "cpu": model or platform.processor(),
        "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
        "cpus": len(os.sched_getaffinity(0)),
        "memory_gb": round(total_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)},
    }


def describe(info: dict[str, Any]) -> str:
    """One line for a table's caption: CPU model, cores and flags."""
    line = f"{info['cpu']}, {info['cpus']} vCPUs, flags {' '.join(info['cpu_flags']) or 'none of note'}"
    if limits := info.get("isa_limits"):
        line += ", limited by " + " ".join(f"{k}={v}" for k, v in sorted(limits.items()))
    return line


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's raw figures as JSON (bench/out/ by convention) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
