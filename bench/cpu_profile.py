"""Where one full-size request's time goes on this CPU, at the server's own CPU plan.

Loads the full-size F5TTS_v1_Base architecture (random weights) in F5Engine with
the dtype ``--dtype auto`` picks here, runs one request (nfe_step 4, seed 3) once to
warm up, then once under torch.profiler, and prints the operators that took the
most time: the share of the int8 (or float32) matrix products, of attention (float32
in every plan) and of the element-wise rest. Set the ISA limits of bench/machine.py
to see the same on AVX2 code paths.

    python bench/cpu_profile.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 DNNL_MAX_CPU_ISA=AVX2 \\
        ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 python bench/cpu_profile.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dtype_bench import TEXT  # noqa: E402
from bench.machine import describe, machine, write_report  # noqa: E402

GROUPS = {
    "matrix products": ("quantized::linear_dynamic", "aten::addmm", "aten::mm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
    "convolutions": ("aten::mkldnn_convolution", "aten::convolution"),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nfe-step", type=int, default=4)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--dtype", default="auto", help="the engine's dtype (default: auto)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tts_inference.engine.base import SynthesisParams, SynthesisRequest
    from tts_inference.engine.f5 import F5Engine
    from tts_inference.tiny_model import FULL_ARCH, make_model
    from tts_inference.voices import VoiceStore

    model_dir = make_model(
        Path(tempfile.mkdtemp(prefix="cpu-profile-")) / "model", arch=FULL_ARCH, vocoder="full"
    )
    engine = F5Engine(model_dir, device="cpu", dtype=args.dtype)
    engine.load()
    request = SynthesisRequest(
        TEXT, VoiceStore(None).get("default"), SynthesisParams(nfe_step=args.nfe_step, seed=3)
    )
    engine.synthesize_batch([request])
    started = time.perf_counter()
    engine.synthesize_batch([request])
    seconds = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.synthesize_batch([request])
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    ops = [
        {"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1000, 1)}
        for e in events[: args.top]
    ]
    shares = {
        name: round(100 * sum(e.self_cpu_time_total for e in events if e.key in keys) / total, 1)
        for name, keys in GROUPS.items()
    }
    shares["everything else"] = round(100 - sum(shares.values()), 1)
    here = machine()
    report: dict[str, Any] = {
        "machine": here,
        "threads": torch.get_num_threads(),
        "engine": {k: engine.info().get(k) for k in ("dtype", "cpu_choice", "concurrent_batches")},
        "nfe_step": args.nfe_step,
        "request_seconds": round(seconds, 2),
        "shares_percent": shares,
        "top": ops,
    }
    print(describe(here))
    print(f"one request: {seconds:.1f} s; shares: {shares}")
    for op in ops:
        print(f"  {op['self_ms']:>9.1f} ms  {op['calls']:>5}  {op['op']}")
    limited = "-avx2-limited" if here["isa_limits"] else ""
    out = args.out or ROOT / "bench" / "out" / f"cpu-profile-{args.dtype}{limited}.json"
    write_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
