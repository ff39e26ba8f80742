"""Server throughput and latency against f5-tts's own F5TTS.infer in a loop.

Same weights, parameters, device and sentences in the same run:

- baseline: `F5TTS.infer` (the package's API) called once per sentence. It is one
  sequential worker, so at concurrency k a request waits for the k-1 ahead of it:
  its latency there is k times the per-call time (a closed loop), and its
  throughput is the same at every concurrency.
- server: `tts-inference serve` on the same model folder, k clients each sending
  requests back to back (closed loop) through /v1/audio/speech.

Also: warm start (process start to /readyz 200 with the model on local disk) and,
for a long text, the time to the first streamed audio byte against the whole response.

    python bench/server_bench.py --size tiny --nfe-step 8
    python bench/server_bench.py --size full --nfe-step 4 --requests 16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from tests.support.server import start_server  # noqa: E402

BIN = Path(sys.executable).parent
VOICE_WAV = ROOT / "inference" / "tts_inference" / "voices" / "default.wav"
VOICE_TXT = ROOT / "inference" / "tts_inference" / "voices" / "default.txt"

SENTENCES = [
    "The early train was late again this morning.",
    "Please leave the package by the blue door.",
    "We will meet at noon near the old library.",
    "Bright stars filled the clear winter sky tonight.",
    "She reads a new book every single week.",
    "The river runs quietly past the sleeping town.",
    "Turn left at the bakery, then walk two blocks.",
    "A warm cup of tea makes the evening better.",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(
    model_dir: Path, size: str, nfe: int, calls: int, device: str = "cpu"
) -> dict[str, Any]:
    """f5-tts's own F5TTS.infer, one call per sentence, on the same folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from f5_tts.api import F5TTS
    from f5_tts.infer.utils_infer import load_model, load_vocoder
    from f5_tts.model import DiT

    from tts_inference.model_folder import load_config

    cfg = load_config(model_dir)
    ckpt, vocab, vocos = (
        str(model_dir / cfg["checkpoint"]),
        str(model_dir / cfg["vocab"]),
        str(model_dir / cfg["vocoder"]["path"]),
    )
    torch.set_num_threads(os.cpu_count() or 1)
    if size == "full":
        tts = F5TTS(
            model="F5TTS_v1_Base",
            ckpt_file=ckpt,
            vocab_file=vocab,
            vocoder_local_path=vocos,
            device=device,
        )
    else:
        # F5TTS() reads the arch of a packaged config by name; the tiny arch is not one,
        # so build the same object around the package's own loaders and keep F5TTS.infer.
        tts = F5TTS.__new__(F5TTS)
        tts.final_wave, tts.target_sample_rate, tts.mel_spec_type = None, 24000, "vocos"
        tts.ode_method, tts.use_ema, tts.device = "euler", True, device
        tts.vocoder = load_vocoder("vocos", True, vocos, device)
        tts.ema_model = load_model(DiT, cfg["arch"], ckpt, "vocos", vocab, "euler", True, device)
    ref_text = VOICE_TXT.read_text().strip()
    tts.infer(
        str(VOICE_WAV),
        ref_text,
        "Warm up.",
        nfe_step=2,
        seed=0,
        show_info=lambda *_: None,
        progress=None,
    )
    times, audio = [], []
    for i in range(calls):
        start = time.perf_counter()
        wav, sr, _ = tts.infer(
            str(VOICE_WAV),
            ref_text,
            SENTENCES[i % len(SENTENCES)],
            nfe_step=nfe,
            seed=i,
            show_info=lambda *_: None,
            progress=None,
        )
        times.append(time.perf_counter() - start)
        audio.append(len(wav) / sr)
    del tts
    if device.startswith("cuda"):  # leave the GPU's memory to the server
        torch.cuda.empty_cache()
    return {"per_call_seconds": times, "audio_seconds": audio}


def one(url: str, text: str, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    resp = httpx.post(
        f"{url}/v1/audio/speech",
        json={
            "model": "bench",
            "input": text,
            "voice": "default",
            "response_format": "pcm",
            "seed": seed,
        },
        timeout=3600,
    )
    resp.raise_for_status()
    return time.perf_counter() - start, len(resp.content) / 2 / 24000


def load_level(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    per_client = max(1, requests // concurrency)
    latencies: list[float] = []
    audio: list[float] = []

    def client(c: int) -> None:
        for j in range(per_client):
            i = c * per_client + j
            lat, secs = one(url, SENTENCES[i % len(SENTENCES)], i)
            latencies.append(lat)
            audio.append(secs)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "throughput": sum(audio) / wall,
        "p50": statistics.median(latencies),
        "p95": pct(latencies, 0.95),
        "wall": wall,
    }


def first_byte(url: str, nfe: int) -> dict[str, float]:
    text = " ".join(SENTENCES * 2)
    start = time.perf_counter()
    first = None
    with httpx.stream(
        "POST",
        f"{url}/v1/audio/speech",
        json={"model": "bench", "input": text, "voice": "default", "response_format": "pcm"},
        timeout=3600,
    ) as resp:
        for chunk in resp.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - start
    return {"first_byte_seconds": first or 0.0, "total_seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--nfe-step", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--baseline-calls", type=int, default=6)
    parser.add_argument(
        "--dtype", default=None, help="the server's --dtype (default: none, the server chooses)"
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="the server's --max-batch (default: none, the server's own)",
    )
    parser.add_argument(
        "--concurrent-batches",
        type=int,
        default=None,
        help="the server's --concurrent-batches (default: the server's own, one batch at a time)",
    )
    parser.add_argument(
        "--no-stream", action="store_true", help="skip the streaming first-byte measurement"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (the baseline's and the server's)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from tts_inference.tiny_model import FULL_ARCH, TINY_ARCH, make_model

    work = Path(tempfile.mkdtemp(prefix="server-bench-"))
    model_dir = make_model(
        work / "model",
        arch=FULL_ARCH if args.size == "full" else TINY_ARCH,
        vocoder="full" if args.size == "full" else "tiny",
    )
    print(
        f"model: {args.size} ({sum(p.stat().st_size for p in model_dir.rglob('*') if p.is_file()) / 1e6:.0f} MB), nfe_step {args.nfe_step}",
        flush=True,
    )

    base = baseline(model_dir, args.size, args.nfe_step, args.baseline_calls, args.device)
    per_call = statistics.median(base["per_call_seconds"])
    base_tput = sum(base["audio_seconds"]) / sum(base["per_call_seconds"])
    print(
        f"baseline F5TTS.infer: {per_call:.2f}s per call, {base_tput:.2f} audio s per wall s",
        flush=True,
    )

    server = start_server(
        model_dir,
        work / "serve.log",
        *("--nfe-step", str(args.nfe_step), "--max-wait-ms", "30", "--max-queue", "256"),
        *("--device", args.device),
        *(("--max-batch", str(args.max_batch)) if args.max_batch else ()),
        *(("--dtype", args.dtype) if args.dtype else ()),
        # A closed loop of k clients queues k requests: none may time out waiting.
        *("--request-timeout", "36000"),
        *(
            ("--concurrent-batches", str(args.concurrent_batches))
            if args.concurrent_batches
            else ()
        ),
        timeout=1800,
    )
    proc, url, warm_start = server.proc, server.url, server.ready_seconds
    results = []
    ttfb: dict[str, float] = {}
    try:
        print(f"server ready {warm_start:.1f}s after start", flush=True)
        for level in (int(x) for x in args.levels.split(",")):
            r = load_level(url, level, max(args.requests, level))
            r["baseline_throughput"] = base_tput
            r["baseline_p50"] = per_call * level
            r["throughput_ratio"] = r["throughput"] / base_tput
            results.append(r)
            print(
                f"c={level:2d}: {r['throughput']:.2f} audio s/s ({r['throughput_ratio']:.2f}x baseline), "
                f"p50 {r['p50']:.2f}s (baseline {r['baseline_p50']:.2f}s), p95 {r['p95']:.2f}s",
                flush=True,
            )
        if not args.no_stream:
            ttfb = first_byte(url, args.nfe_step)
            print(
                f"streaming: first byte {ttfb['first_byte_seconds']:.2f}s of {ttfb['total_seconds']:.2f}s",
                flush=True,
            )
        build = next(
            (
                line
                for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
                if line.startswith("tts_build_info{")
            ),
            "",
        )
        memory = [
            float(line.split()[-1])
            for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines()
            if line.startswith("tts_gpu_memory_bytes")
        ]
        print(f"server: {build}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    report = {
        "machine": {**machine(), "device": args.device},
        "server_build_info": build,
        "gpu_memory_bytes": memory[0] if memory else None,
        "size": args.size,
        "nfe_step": args.nfe_step,
        "dtype": args.dtype or "default",
        "max_batch": args.max_batch or "default",
        "concurrent_batches": args.concurrent_batches or "default",
        "baseline": {"per_call_seconds_median": per_call, "throughput": base_tput, **base},
        "levels": results,
        "warm_start_seconds": warm_start,
        "streaming": ttfb,
    }
    out = (
        args.out
        or ROOT
        / "bench"
        / "out"
        / f"server-{args.size}-{args.dtype or 'default'}-b{args.max_batch or 'default'}"
        f"-c{args.concurrent_batches or 'default'}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
