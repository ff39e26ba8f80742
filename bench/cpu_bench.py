"""Where a CPU's time goes in one full-size request, and what the CPU settings buy.

On the full-size F5TTS_v1_Base architecture (random weights), through F5Engine:

- kernels: the three Linear shapes of one DiT block at 1,740 rows (a 870-frame
  sequence, doubled for guidance) in float32 and in int8 on each of torch's
  quantized engines;
- profile: one int8 request under the torch profiler, its time by operator group;
- two batches at once: two int8 requests one after the other on every core,
  then at once with the cores shared (concurrent_batches=2), and whether the
  audio is the same;
- int8 against float32: the same seeded request's signal-to-difference ratio.

    python bench/cpu_bench.py --nfe-step 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The early train was late again this morning.",
    "Please leave the package by the blue door.",
]


def _timed(fn: Any, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def kernels(repeat: int) -> dict[str, float]:
    """Milliseconds for one DiT block's Linear shapes (qkv-sized, up, down) at 1,740 rows."""
    import torch

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.manual_seed(0)
    rows = 1740
    shapes = [(1024, 1024), (1024, 2048), (2048, 1024)]
    layers = [torch.nn.Linear(i, o) for i, o in shapes]
    inputs = [torch.randn(rows, i) for i, _ in shapes]
    out: dict[str, float] = {}
    before = torch.backends.quantized.engine
    with torch.inference_mode():
        out["float32"] = 1000 * sum(
            _timed(lambda lin=lin, x=x: lin(x), repeat)
            for lin, x in zip(layers, inputs, strict=True)
        )
        for engine in ("fbgemm", "x86", "onednn"):
            if engine not in torch.backends.quantized.supported_engines:
                continue
            torch.backends.quantized.engine = engine
            total = 0.0
            for lin, x in zip(layers, inputs, strict=True):
                q = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                    torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8
                )
                total += _timed(lambda q=q, x=x: q(x), repeat)
            out[f"int8-{engine}"] = 1000 * total
    torch.backends.quantized.engine = before
    return out


def _requests(nfe: int) -> list[Any]:
    from tts_inference.engine.base import SynthesisParams, SynthesisRequest
    from tts_inference.voices import VoiceStore

    voice = VoiceStore(None).get("default")
    return [
        SynthesisRequest(text, voice, SynthesisParams(nfe_step=nfe, seed=i))
        for i, text in enumerate(TEXTS)
    ]


GROUPS = {
    "int8 Linear": ("quantized::linear_dynamic",),
    "attention": ("scaled_dot_product", "flash_attention"),
}


def profile(engine: Any, request: Any) -> dict[str, float]:
    """Share of one request's CPU time by operator group."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.synthesize_batch([request])
    totals = dict.fromkeys([*GROUPS, "the rest"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, keys in GROUPS.items() if any(k in event.key for k in keys)), None)
        totals[group or "the rest"] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {name: value / whole for name, value in totals.items()}


def two_at_once(engine: Any, requests: list[Any], rounds: int) -> dict[str, Any]:
    """``rounds`` times: the requests one after the other, then all at once (alternating)."""
    sequential = concurrent = 0.0
    together: dict[int, Any] = {}

    def run(i: int) -> None:
        together[i] = engine.synthesize_batch([requests[i]])[0]

    for _ in range(rounds):
        start = time.perf_counter()
        alone = [engine.synthesize_batch([r])[0] for r in requests]
        sequential += time.perf_counter() - start
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent += time.perf_counter() - start
    diff = max(float(np.abs(alone[i] - together[i]).max()) for i in range(len(requests)))
    return {
        "rounds": rounds,
        "one_after_the_other_seconds": sequential,
        "at_once_seconds": concurrent,
        "speedup": sequential / concurrent,
        "max_abs_difference": diff,
        "audio": alone,
    }


def snr_db(reference: Any, other: Any) -> float:
    n = min(len(reference), len(other))
    noise = float(np.sum((reference[:n] - other[:n]) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference[:n] ** 2)) / noise)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nfe-step", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per kernel")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two-at-once test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "cpu.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))

    from tts_inference.engine.f5 import F5Engine
    from tts_inference.tiny_model import FULL_ARCH, make_model

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "nfe_step": args.nfe_step,
    }
    report["linear_ms"] = kernels(args.repeat)
    print("Linear shapes of one block, ms:", report["linear_ms"], flush=True)

    model_dir = make_model(
        Path(tempfile.mkdtemp(prefix="cpu-bench-")) / "model", arch=FULL_ARCH, vocoder="full"
    )
    requests = _requests(args.nfe_step)
    int8 = F5Engine(model_dir, device="cpu", dtype="int8", concurrent_batches=2)
    int8.load()
    int8.synthesize_batch(requests[:1])  # first-call costs
    report["int8_profile_share"] = profile(int8, requests[0])
    print("one int8 request, share of CPU time:", report["int8_profile_share"], flush=True)
    pair = two_at_once(int8, requests, args.rounds)
    int8_audio = pair.pop("audio")
    report["two_int8_requests"] = pair
    print("two int8 requests:", pair, flush=True)
    int8.unload()

    fp32 = F5Engine(model_dir, device="cpu", dtype="float32")
    fp32.load()
    reference = fp32.synthesize_batch(requests[:1])[0]
    report["int8_vs_float32_snr_db"] = snr_db(reference, int8_audio[0])
    print(f"int8 against float32: {report['int8_vs_float32_snr_db']:.1f} dB", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
