"""What each CPU dtype buys on this machine, and what `--dtype auto` chooses here.

On the full-size F5TTS_v1_Base architecture (random weights), for float32,
bfloat16 and int8:

- one DiT block at 1,740 rows (870 frames, doubled for guidance): ms per pass
  on every core, and two passes one after the other against two at once with
  the cores shared (what ``--concurrent-batches 2`` does);
- one whole request through F5Engine (seconds), and its audio's
  signal-to-difference ratio against float32's for the same seed;
- what ``engine/cpu.py`` chooses for this CPU's features.

    python bench/dtype_bench.py --nfe-step 4
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe, machine, write_report  # noqa: E402

DTYPES = ("float32", "bfloat16", "int8")
TEXT = "The early train was late again this morning, so we walked."


def _arch(size: str) -> dict[str, Any]:
    from tts_inference.tiny_model import FULL_ARCH, TINY_ARCH

    return FULL_ARCH if size == "full" else TINY_ARCH


def block_inputs(
    dtype: str, device: str = "cpu", frames: int = 870, *, size: str = "full"
) -> tuple[Any, Any, Any]:
    """(x, t, rope): a DiT block's inputs for one request of ``frames`` frames, doubled
    for guidance, drawn from torch's generator as it stands (int8 blocks take float32)."""
    import torch
    from x_transformers.x_transformers import RotaryEmbedding  # type: ignore[import-untyped]

    arch = _arch(size)
    dim, heads = arch["dim"], arch["heads"]
    kind = torch.float32 if dtype == "int8" else getattr(torch, dtype)
    x, t = torch.randn(2, frames, dim), torch.randn(2, dim)
    freqs, scale = RotaryEmbedding(dim // heads).forward_from_seq_len(frames)
    return x.to(device, kind), t.to(device, kind), (freqs.to(device), scale)


def one_block(
    dtype: str, device: str = "cpu", frames: int = 870, *, size: str = "full"
) -> tuple[Any, Any, Any, Any]:
    """(block, x, t, rope): one DiT block of the full-size (or ``size="tiny"``) model with
    random weights (seed 0) in ``dtype`` (float32, bfloat16, float16, or int8: dynamic
    int8 Linear layers, CPU only), and its inputs (``block_inputs``)."""
    import torch

    from tts_inference.engine.f5_package import import_f5

    arch = _arch(size)
    dit_block = import_f5("f5_tts.model.modules").DiTBlock
    torch.manual_seed(0)
    dim, heads = arch["dim"], arch["heads"]
    block = dit_block(dim=dim, heads=heads, dim_head=dim // heads, ff_mult=arch["ff_mult"])
    block = block.eval()
    x, t, rope = block_inputs(dtype, device, frames, size=size)
    if dtype == "int8":
        if "onednn" in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = "onednn"
        block = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            block, {torch.nn.Linear}, dtype=torch.qint8
        )
    else:
        block = block.to(device, getattr(torch, dtype))
    return block, x, t, rope


def _block_variants() -> dict[str, tuple[Any, Any, Any, Any]]:
    """(block, x, t, rope) per dtype: one full-size DiT block with random weights."""
    return {name: one_block(name) for name in DTYPES}


def block_figures(repeat: int) -> dict[str, dict[str, float]]:
    import torch

    threads = torch.get_num_threads()
    out: dict[str, dict[str, float]] = {}
    for name, (block, x, t, rope) in _block_variants().items():

        def once(block: Any = block, x: Any = x, t: Any = t, rope: Any = rope) -> None:
            with torch.inference_mode():
                block(x, t, rope=rope)

        def two_in_a_row() -> float:
            torch.set_num_threads(threads)
            start = time.perf_counter()
            once()
            once()
            return time.perf_counter() - start

        def two_at_once() -> float:
            def run() -> None:
                torch.set_num_threads(max(1, threads // 2))
                once()

            workers = [threading.Thread(target=run) for _ in range(2)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            torch.set_num_threads(threads)
            return time.perf_counter() - start

        once()
        single = []
        for _ in range(repeat):
            start = time.perf_counter()
            once()
            single.append(time.perf_counter() - start)
        row = min(two_in_a_row() for _ in range(repeat))
        both = min(two_at_once() for _ in range(repeat))
        out[name] = {
            "block_ms": 1000 * min(single),
            "two_in_a_row_ms": 1000 * row,
            "two_at_once_ms": 1000 * both,
        }
        print(name, {k: round(v, 1) for k, v in out[name].items()}, flush=True)
    return out


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    n = min(len(reference), len(other))
    noise = float(np.sum((reference[:n] - other[:n]) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference[:n] ** 2)) / noise)


def request_figures(nfe_step: int) -> dict[str, dict[str, float]]:
    from tts_inference.engine.base import SynthesisParams, SynthesisRequest
    from tts_inference.engine.f5 import F5Engine
    from tts_inference.tiny_model import FULL_ARCH, make_model
    from tts_inference.voices import VoiceStore

    model_dir = make_model(
        Path(tempfile.mkdtemp(prefix="dtype-bench-")) / "model", arch=FULL_ARCH, vocoder="full"
    )
    voice = VoiceStore(None).get("default")
    request = SynthesisRequest(TEXT, voice, SynthesisParams(nfe_step=nfe_step, seed=3))
    audio: dict[str, np.ndarray] = {}
    out: dict[str, dict[str, float]] = {}
    for name in DTYPES:
        engine = F5Engine(model_dir, device="cpu", dtype=name, concurrent_batches=1)
        started = time.perf_counter()
        engine.load()
        load = time.perf_counter() - started
        engine.synthesize_batch([request])  # first-call costs
        started = time.perf_counter()
        [audio[name]] = engine.synthesize_batch([request])
        out[name] = {"load_seconds": load, "request_seconds": time.perf_counter() - started}
        engine.unload()
        print(name, {k: round(v, 2) for k, v in out[name].items()}, flush=True)
    for name in DTYPES:
        out[name]["snr_db_vs_float32"] = snr_db(audio["float32"], audio[name])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nfe-step", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per block figure")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import torch

    from tts_inference.engine import cpu

    choice = cpu.plan(
        "auto",
        None,
        quantized_engines=torch.backends.quantized.supported_engines,
    )
    here = machine()
    print(f"{describe(here)}\nauto chooses: {choice}", flush=True)
    report: dict[str, Any] = {
        "machine": here,
        "threads": torch.get_num_threads(),
        "nfe_step": args.nfe_step,
        "auto": {"dtype": choice.dtype, "concurrent_batches": choice.concurrent_batches},
        "block": block_figures(args.repeat),
        "request": request_figures(args.nfe_step),
    }
    out = args.out or ROOT / "bench" / "out" / f"dtype-{report['machine']['cpu_flags'][-1]}.json"
    write_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
