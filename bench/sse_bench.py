"""Time to the first SSE event against the whole response, at the server's defaults.

`tts-inference serve` on a generated model folder (tiny, or the full-size
F5TTS_v1_Base architecture with random weights), no dtype or batching flags.
One text long enough for several chunks is spoken, in turn:

- stream_format "sse": the first `speech.audio.delta` event and the final
  `speech.audio.done`;
- stream_format "audio": the first raw audio byte and the last (a text of
  several chunks streams this way even without stream_format).

Each is repeated and the medians are reported, with the machine.

    python bench/sse_bench.py --size tiny
    python bench/sse_bench.py --size full --nfe-step 4 --repeats 1 --sentences 3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe, machine  # noqa: E402
from tests.support.server import start_server, stop  # noqa: E402

TEXT = (
    "The early train was late again this morning, so the station filled with people "
    "who had somewhere else to be. A voice on the speakers apologised twice and then "
    "went quiet. Outside, the rain turned to snow and back to rain, and nobody could "
    "decide whether to wait or walk. When the train finally arrived, it was quieter "
    "than anyone expected, and the doors opened onto a carriage that smelled of coffee. "
    "By the time it reached the city, the sun had come out, and the whole morning "
    "felt like a story someone else had told."
)


def timed(url: str, text: str, stream_format: str, nfe: int) -> dict[str, float]:
    body: dict[str, Any] = {
        "model": "bench",
        "input": text,
        "voice": "alloy",
        "nfe_step": nfe,
        "stream_format": stream_format,
    }
    if stream_format == "audio":
        body["response_format"] = "pcm"  # SSE carries pcm when no format is asked
    start = time.perf_counter()
    first: float | None = None
    size = 0
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=7200) as resp:
        resp.raise_for_status()
        pieces = resp.iter_lines() if stream_format == "sse" else resp.iter_bytes()
        for piece in pieces:
            if piece and first is None:
                first = time.perf_counter() - start
            size += len(piece)
    total = time.perf_counter() - start
    return {"first_seconds": first if first is not None else total, "total_seconds": total}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--nfe-step", type=int, default=32, help="steps per request")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--sentences", type=int, default=0, help="speak only the text's first N sentences"
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first request")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from tts_inference.tiny_model import FULL_ARCH, TINY_ARCH, make_model

    work = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    full = args.size == "full"
    model_dir = make_model(
        work / "model", arch=FULL_ARCH if full else TINY_ARCH, vocoder="full" if full else "tiny"
    )
    server = start_server(model_dir, work / "serve.log", timeout=1800)
    info = machine()
    print(f"machine: {describe(info)}", flush=True)
    text = TEXT
    if args.sentences:
        text = " ".join(re.split(r"(?<=[.!?])\s+", TEXT)[: args.sentences])
    runs: dict[str, list[dict[str, float]]] = {"sse": [], "audio": []}
    try:
        if not args.no_warmup:
            timed(server.url, text, "sse", args.nfe_step)  # the first request's one-time costs
        for _ in range(args.repeats):
            for name, rows in runs.items():
                rows.append(timed(server.url, text, name, args.nfe_step))
    finally:
        stop(server)
    summary = {
        name: {
            "first_seconds": statistics.median(r["first_seconds"] for r in rows),
            "total_seconds": statistics.median(r["total_seconds"] for r in rows),
        }
        for name, rows in runs.items()
    }
    for name, row in summary.items():
        print(
            f"{name:5s}: first {row['first_seconds']:.2f}s of {row['total_seconds']:.2f}s",
            flush=True,
        )
    report = {
        "machine": info,
        "size": args.size,
        "nfe_step": args.nfe_step,
        "text_chars": len(text),
        "repeats": args.repeats,
        "median": summary,
        "runs": runs,
    }
    out = args.out or ROOT / "bench" / "out" / f"sse-{args.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
