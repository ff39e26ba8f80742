"""A 5,000-word text as one job, against the same text as one speech request per sentence.

Both run in the same run, on the same `tts-inference serve` process: first the
text goes in as one POST /v1/jobs (split, batched through the queue's job
lane, joined, encoded and uploaded to a local S3 server), then sentence by
sentence as sequential POST /v1/audio/speech calls, the way a client without
the jobs API would do it. Each side's figure is seconds of audio per wall
second (wall time from the first request to the last byte, or for the job
from POST to the moment GET reports succeeded, upload included); the ratio is
job / sequential. ``--repeats`` alternates the order.

    python bench/jobs_bench.py [--words 5000] [--nfe-step 4] [--model-dir DIR]

The default model is the tiny random-weight one (it speaks noise; the numbers
measure the serving path, not F5TTS_v1_Base), on CPU unless --device says
otherwise. Needs the dev extra (moto's server) and ffmpeg.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

BIN = Path(sys.executable).parent
BUCKET = "bench-jobs"
KEY_ID = "benchaccesskey"
SECRET = "benchsecretkey-not-a-real-one"

WORDS = [
    "the",
    "morning",
    "light",
    "fell",
    "across",
    "the",
    "quiet",
    "river",
    "while",
    "a",
    "small",
    "boat",
    "drifted",
    "past",
    "old",
    "stone",
    "houses",
    "and",
    "children",
    "ran",
    "along",
    "the",
    "bank",
    "calling",
    "to",
    "each",
    "other",
    "about",
    "the",
    "fish",
    "they",
    "had",
    "seen",
    "under",
    "the",
    "bridge",
    "near",
    "the",
    "market",
    "where",
    "traders",
    "sold",
    "bread",
    "apples",
    "and",
    "warm",
    "cheese",
    "to",
    "travellers",
    "who",
    "came",
    "from",
    "distant",
    "towns",
    "to",
    "hear",
    "the",
    "music",
    "of",
    "the",
    "square",
    "every",
    "evening",
    "as",
    "the",
    "bells",
    "rang",
    "and",
    "lamps",
    "were",
    "lit",
    "one",
    "by",
    "one",
    "along",
    "narrow",
    "streets",
]


def chapter(words: int, seed: int = 0) -> str:
    """``words`` words of plain English-like prose in sentences of 8 to 20 words."""
    rng = random.Random(seed)
    sentences: list[str] = []
    left = words
    while left > 0:
        n = min(left, rng.randint(8, 20))
        body = " ".join(rng.choice(WORDS) for _ in range(n))
        sentences.append(body[0].upper() + body[1:] + rng.choice([".", ".", ".", "!", "?"]))
        left -= n
    return " ".join(sentences)


def split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a process that is starting up
    raise TimeoutError(f"{url} not ready after {timeout}s")


def run_job(url: str, text: str, nfe: int, index: int) -> dict[str, Any]:
    started = time.monotonic()
    resp = httpx.post(
        f"{url}/v1/jobs",
        json={
            "text": text,
            "voice": "default",
            "output": {"uri": f"s3://{BUCKET}/outputs/bench/run-{index}.wav"},
            "params": {"nfeStep": nfe, "seed": 1},
        },
        timeout=60,
    )
    resp.raise_for_status()
    job_id = resp.json()["id"]
    while True:
        status: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=60).json()
        if status["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)  # polling the job's state: the API offers no event
    wall = time.monotonic() - started
    if status["state"] != "succeeded":
        raise RuntimeError(f"the job failed: {status['error']}")
    return {
        "wall_seconds": wall,
        "audio_seconds": status["audioSeconds"],
        "chunks": status["chunksTotal"],
        "timings": status["timings"],
    }


def run_sequential(url: str, sentences: list[str], nfe: int) -> dict[str, Any]:
    started = time.monotonic()
    samples = 0
    with httpx.Client(timeout=300) as client:
        for sentence in sentences:
            resp = client.post(
                f"{url}/v1/audio/speech",
                json={
                    "model": "tiny",
                    "input": sentence,
                    "voice": "default",
                    "response_format": "pcm",
                    "nfe_step": nfe,
                    "seed": 1,
                },
            )
            resp.raise_for_status()
            samples += len(resp.content) // 2
    return {
        "wall_seconds": time.monotonic() - started,
        "audio_seconds": samples / 24000,
        "requests": len(sentences),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--words", type=int, default=5000)
    parser.add_argument("--nfe-step", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--model-dir", type=Path, help="default: a fresh tiny model")
    parser.add_argument("--device", help="cpu, cuda (default: the server's choice)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/jobs.json"))
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None:
        print("error: ffmpeg is needed", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="jobs-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        model = args.model_dir
        if model is None:
            from tts_inference.tiny_model import make_model

            model = make_model(work / "model")
        s3_port = free_port()
        s3_log = work / "moto.log"
        procs.append(
            subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                stdout=open(s3_log, "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
        )
        endpoint = f"http://127.0.0.1:{s3_port}"
        wait_http(f"{endpoint}/moto-api/", procs[-1], 60, s3_log)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID=KEY_ID,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_REGION="us-east-1",
        )
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
            config=Config(request_checksum_calculation="when_required"),
        )
        s3.create_bucket(Bucket=BUCKET)

        port = free_port()
        serve_log = work / "serve.log"
        command = [
            str(BIN / "tts-inference"),
            "serve",
            "--model-dir",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--nfe-step",
            str(args.nfe_step),
            "--max-batch",
            str(args.max_batch),
            "--cache-dir",
            str(work / "cache"),
            "--voices-uri",
            f"s3://{BUCKET}/voices/",
            "--allowed-buckets",
            BUCKET,
            "--log-level",
            "warning",
        ]
        if args.device:
            command += ["--device", args.device]
        procs.append(
            subprocess.Popen(
                command,
                stdout=open(serve_log, "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", procs[-1], 300, serve_log)

        text = chapter(args.words)
        sentences = split_sentences(text)
        print(
            f"{args.words} words, {len(text)} characters, {len(sentences)} sentences, "
            f"nfe_step {args.nfe_step}",
            flush=True,
        )
        jobs: list[dict[str, Any]] = []
        sequential: list[dict[str, Any]] = []
        for i in range(args.repeats):
            order = ["job", "sequential"] if i % 2 == 0 else ["sequential", "job"]
            for what in order:
                if what == "job":
                    result = run_job(url, text, args.nfe_step, i)
                    jobs.append(result)
                else:
                    result = run_sequential(url, sentences, args.nfe_step)
                    sequential.append(result)
                rate = result["audio_seconds"] / result["wall_seconds"]
                print(
                    f"  {what:<10} {result['audio_seconds']:8.1f} s of audio in "
                    f"{result['wall_seconds']:7.1f} s: {rate:6.2f} audio s per wall s",
                    flush=True,
                )

        def rate(results: list[dict[str, Any]]) -> float:
            return float(statistics.median(r["audio_seconds"] / r["wall_seconds"] for r in results))

        ratio = rate(jobs) / rate(sequential)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        batch = re.search(r"^tts_batch_size_sum (\S+)$", metrics, re.M)
        batches = re.search(r"^tts_batch_size_count (\S+)$", metrics, re.M)
        device = re.search(r'tts_build_info\{[^}]*device="([^"]+)"', metrics)
        report = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "device": device.group(1) if device else "unknown",
            },
            "model": str(model) if args.model_dir else "tiny (random weights)",
            "words": args.words,
            "characters": len(text),
            "sentences": len(sentences),
            "nfe_step": args.nfe_step,
            "max_batch": args.max_batch,
            "repeats": args.repeats,
            "job": jobs,
            "sequential": sequential,
            "audio_seconds_per_wall_second": {"job": rate(jobs), "sequential": rate(sequential)},
            "ratio_job_vs_sequential": ratio,
            "mean_batch_size": (
                float(batch.group(1)) / float(batches.group(1)) if batch and batches else None
            ),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"job / sequential: {ratio:.2f}x audio seconds per wall second -> {args.out}")
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
