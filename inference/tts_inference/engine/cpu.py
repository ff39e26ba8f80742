"""What a CPU server runs with when no flag says: the dtype and the batches at once.

The choice follows torch's build (its quantized engines), not a timing at
start-up, so every process on one kind of machine (each replica, each part of
an Indexed Job) chooses the same and computes the same audio. Each rule is a
measurement (docs/benchmarks.md, "CPU: what --dtype auto chooses"):

- where torch has a quantized engine (every x86-64 build): int8, dynamic
  quantization of the transformer's Linear layers. One full-size DiT block
  runs 2.26x float32 on an AVX-512 Xeon (avx512_bf16, no AMX), 2.90x on an
  AVX-512 EPYC with the same flags and 2.0x on an AVX2 EPYC; a whole request
  1.73x on the Xeon and 2.42x on the AVX-512 EPYC. Its audio keeps 25 dB
  signal-to-difference against float32's for the same seed.
- otherwise float32.

One batch at a time, with every core: a batch's kernels then always run on the
same number of threads, so a request's audio never depends on what runs beside
it. Two batches at once (``--concurrent-batches 2``, each re-taking its share
of the cores per DiT block) bought +16 to +19 % at concurrency 16 on the EPYC,
but a chunk's audio then changed with the other batch's timing (15 steps of
16-bit audio in int8, one in float32: the parts of a split job no longer
joined into the audio of one run).

bfloat16 is never chosen by itself: its speed without AMX is not told by the
CPU's flags (a whole request ran 0.59x float32 on the Xeon above and 2.10x on
the EPYC with the same flags, still behind int8 there), and its audio measured
-2.8 dB against float32's for the same seed on the random-weight model, far
outside ``MIN_SNR_DB``. An AMX machine measured it faster than int8 (2.36x
against 1.66x ``F5TTS.infer``): ``--dtype bfloat16`` is there for whoever
checks its audio on their own weights.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

#: The least signal-to-difference ratio (dB) a chosen dtype's audio keeps against float32's.
MIN_SNR_DB = 20.0

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


def plan(
    dtype: str,
    concurrent_batches: int | None,
    *,
    quantized_engines: Collection[str],
) -> CpuPlan:
    """The dtype and batches at once for a CPU, given what was asked for (``auto`` and None
    leave the choice to the machine) and what torch's build has."""
    batches = 1 if concurrent_batches is None else concurrent_batches
    if dtype != "auto":
        return CpuPlan(dtype, batches, REASON_FLAG, f"--dtype {dtype} given")
    engines = [e for e in quantized_engines if e in ("onednn", "x86", "fbgemm")]
    if engines:
        return CpuPlan(
            "int8",
            batches,
            REASON_INT8,
            f"int8 Linear layers (torch's {engines[0]} engine) run fastest on a CPU "
            "within the audio-quality bound",
        )
    return CpuPlan(
        "float32",
        batches,
        REASON_PLAIN,
        "torch has no quantized engine for this CPU",
    )
