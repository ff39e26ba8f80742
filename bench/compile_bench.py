"""What torch.compile buys one full-size DiT block on this machine, and what it costs.

One F5TTS_v1_Base DiT block (random weights; ``--size tiny``: the tiny model's)
at the engine's dtype, eager against ``torch.compile(block, dynamic=True)``
(regional compilation: the 22 blocks share the code, so one compile serves
them all; dynamic, since every batch has its own length):

- the first compiled call (the compile, from an empty cache) at ``--frames``,
  then the first call at a second length (a recompile, or none);
- eager and compiled passes interleaved, ``--rounds`` each: best and median;
- the compiled output's largest difference from eager's, against its peak.

    python bench/compile_bench.py                       # CPU: the dtype the server picks here
    python bench/compile_bench.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dtype_bench import block_inputs, one_block  # noqa: E402
from bench.machine import describe, machine, write_report  # noqa: E402


def _nothing() -> None:
    pass


def _timed(call: Any, sync: Any) -> float:
    start = time.perf_counter()
    call()
    sync()
    return time.perf_counter() - start


def measure(
    dtype: str, device: str, frames: int, second: int, rounds: int, size: str = "full"
) -> dict[str, Any]:
    import torch

    block, x, t, rope = one_block(dtype, device, frames, size=size)
    x2, t2, rope2 = block_inputs(dtype, device, second, size=size)
    sync: Any = torch.cuda.synchronize if device.startswith("cuda") else _nothing
    compiled: Any = torch.compile(block, dynamic=True)
    with torch.inference_mode():
        reference = block(x, t, rope=rope)
        first = _timed(lambda: compiled(x, t, rope=rope), sync)
        again = _timed(lambda: compiled(x2, t2, rope=rope2), sync)
        out, out2 = compiled(x, t, rope=rope), compiled(x2, t2, rope=rope2)
        diff = max(
            float((out - reference).abs().max()),
            float((out2 - block(x2, t2, rope=rope2)).abs().max()),
        )
        peak = float(reference.abs().max())
        passes: dict[str, list[float]] = {"eager": [], "compiled": []}
        runs = {
            "eager": lambda: block(x, t, rope=rope),
            "compiled": lambda: compiled(x, t, rope=rope),
        }
        for _ in range(rounds):
            for name, call in runs.items():
                passes[name].append(1000 * _timed(call, sync))
    best = {name: min(times) for name, times in passes.items()}
    median = {name: statistics.median(times) for name, times in passes.items()}
    return {
        "dtype": dtype,
        "size": size,
        "frames": frames,
        "compile_seconds": first,
        "second_length": second,
        "second_length_first_call_seconds": again,
        "eager_ms": {"best": best["eager"], "median": median["eager"]},
        "compiled_ms": {"best": best["compiled"], "median": median["compiled"]},
        "speedup_best": best["eager"] / best["compiled"],
        "speedup_median": median["eager"] / median["compiled"],
        "max_abs_difference": diff,
        "output_peak": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="float32, bfloat16, float16 or int8 (CPU); auto: what the server picks on a CPU",
    )
    parser.add_argument("--frames", type=int, default=870)
    parser.add_argument("--second-length", type=int, default=611)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A cold compile, as a new server's: nothing from an earlier run's cache.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile-bench-")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message="attn_mask_enabled")
    import torch

    from tts_inference.engine import cpu

    dtype = args.dtype
    if dtype == "auto":
        if not args.device.startswith("cpu"):
            parser.error("--dtype auto is for a CPU; name the GPU's dtype")
        dtype = cpu.plan(
            "auto", None, quantized_engines=torch.backends.quantized.supported_engines
        ).dtype
    here = machine()
    print(f"{describe(here)}; {args.device}, {dtype}", flush=True)
    figures = measure(dtype, args.device, args.frames, args.second_length, args.rounds, args.size)
    print(
        f"compile {figures['compile_seconds']:.1f} s (a second length: "
        f"{figures['second_length_first_call_seconds']:.1f} s); eager "
        f"{figures['eager_ms']['best']:.1f} ms, compiled {figures['compiled_ms']['best']:.1f} ms "
        f"best ({figures['speedup_best']:.2f}x), medians {figures['eager_ms']['median']:.1f} "
        f"and {figures['compiled_ms']['median']:.1f} ms ({figures['speedup_median']:.2f}x); "
        f"largest difference {figures['max_abs_difference']:.3g} of a peak "
        f"{figures['output_peak']:.3g}",
        flush=True,
    )
    report = {
        "machine": here,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cxx_compiler": shutil.which(os.environ.get("CXX", "g++")),
        **figures,
    }
    out = args.out or ROOT / "bench" / "out" / f"compile-{args.device}-{dtype}.json"
    write_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
