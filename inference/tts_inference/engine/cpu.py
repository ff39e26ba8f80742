"""What a CPU server runs with when no flag says: the dtype and the batches at once.

The choice follows the CPU's features, read from /proc/cpuinfo, so every
process on one machine (each replica, each part of an Indexed Job) chooses
the same and computes the same audio; each rule is a measurement
(docs/benchmarks.md, "CPU: what --dtype auto chooses"):

- AMX (``amx_bf16``): bfloat16. Matrix tiles run bfloat16 in hardware: one
  request measured 2.36x ``F5TTS.infer`` against int8's 1.66x on an AMX Xeon.
  One batch at a time: two at once measured slower there at concurrency 4.
- otherwise, where torch has a quantized engine: int8 (dynamic quantization of
  the transformer's Linear layers). One DiT block at full size: 2.1x float32
  on an AVX-512 Xeon with avx512_bf16 but no AMX (where bfloat16 measured
  0.74x float32: without AMX its matmuls are emulated), 2.0x on an AVX2 EPYC.
  Two batches at once on the one model, each with half the cores: +16 to +19 %
  throughput at concurrency 16 on the EPYC, never slower for a lone request.
- otherwise float32.

Quality bound: a choice's audio keeps a signal-to-difference ratio of at least
``MIN_SNR_DB`` against float32's for the same seed (measured by
``bench/cpu_bench.py``; bfloat16 and int8 both stay above it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

#: The least signal-to-difference ratio (dB) a chosen dtype's audio keeps against float32's.
MIN_SNR_DB = 20.0

REASON_AMX = "amx-bf16"
REASON_INT8 = "int8-linear"
REASON_PLAIN = "no-int8-engine"
REASON_FLAG = "flag"


@dataclass(frozen=True)
class CpuPlan:
    dtype: str
    concurrent_batches: int
    #: One of the REASON_* constants (a metric label: a small fixed set).
    reason: str
    #: The same in words, for the start-up log.
    why: str


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def plan(
    dtype: str,
    concurrent_batches: int | None,
    *,
    flags: Collection[str],
    quantized_engines: Collection[str],
    threads: int,
) -> CpuPlan:
    """The dtype and batches at once for a CPU, given what was asked for (``auto`` and None
    leave the choice to the machine) and what the machine has."""
    two = min(2, max(threads, 1))

    def batches(default: int) -> int:
        return default if concurrent_batches is None else concurrent_batches

    if dtype != "auto":
        return CpuPlan(
            dtype, batches(1 if dtype == "bfloat16" else two), REASON_FLAG, f"--dtype {dtype} given"
        )
    if "amx_bf16" in flags:
        return CpuPlan(
            "bfloat16",
            batches(1),
            REASON_AMX,
            "the CPU has AMX (amx_bf16): bfloat16 matmuls run in hardware",
        )
    engines = [e for e in quantized_engines if e in ("onednn", "x86", "fbgemm")]
    if engines:
        bf16 = "avx512_bf16" in flags
        return CpuPlan(
            "int8",
            batches(two),
            REASON_INT8,
            "no AMX: int8 Linear layers run fastest"
            + (" (avx512_bf16 without AMX runs bfloat16 slower than float32)" if bf16 else ""),
        )
    return CpuPlan(
        "float32",
        batches(two),
        REASON_PLAIN,
        "torch has no quantized engine for this CPU and it has no AMX",
    )
