"""`make demo`: the whole warm path on one machine, with real parts.

1. an S3 server on 127.0.0.1 (moto's server; any S3-compatible store works the same),
2. a model: the tiny random-weight F5-TTS (it speaks noise: it exists so the real
   loading and inference code runs anywhere in seconds), or with
   MODEL=F5TTS_v1_Base the real one mirrored from Hugging Face (needs the hub),
3. `tts-inference publish` into the bucket, manifest last,
4. `tts-inference sync` into a local cache, twice: the second run fetches nothing,
5. `tts-inference serve` on the synced folder, waiting for /readyz,
6. one sentence through the official `openai` client into demo.wav,
then prints the file, its duration and the real-time factor, and stops everything it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORK = ROOT / ".demo"
OUT = ROOT / "demo.wav"
BUCKET = "tts-demo"
SENTENCE = "Hello from tts-operator. This sentence was synthesized by a warm F5-TTS server."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def wait_until(
    what: str, check: object, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{what}: the process exited with {proc.returncode}; see {WORK}/*.log")
        try:
            if callable(check) and check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what}: not ready after {timeout:.0f}s; see {WORK}/*.log")


def run(step: str, cmd: list[str], env: dict[str, str]) -> str:
    print(f"\n$ {' '.join([Path(cmd[0]).name, *cmd[1:]])}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stderr}")
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    print(f"  {last}", flush=True)
    return last


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    model = os.environ.get("MODEL", "tiny")
    s3_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
        AWS_ACCESS_KEY_ID="demo-access-key",
        AWS_SECRET_ACCESS_KEY="demo-secret-key",
        AWS_REGION="us-east-1",
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"S3 server (moto) on 127.0.0.1:{s3_port}")
        moto_log = open(WORK / "s3.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                stdout=moto_log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_until(
            "S3 server",
            lambda: port_open(s3_port),
            30,
            procs[-1],
        )
        import boto3

        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket=BUCKET)

        if model == "tiny":
            name, src = "tiny", str(WORK / "tiny-model")
            run("make-tiny-model", [str(BIN / "tts-inference"), "make-tiny-model", src], env)
            extra: list[str] = []
        elif model == "F5TTS_v1_Base":
            name, src = "F5TTS_v1_Base", "hf://SWivid/F5-TTS/F5TTS_v1_Base"
            extra = ["--vocoder", "hf://charactr/vocos-mel-24khz"]
        else:
            raise SystemExit(f"MODEL={model!r}: use tiny (default) or F5TTS_v1_Base")
        source = f"s3://{BUCKET}/models/{name}/v1"
        run("publish", [str(BIN / "tts-inference"), "publish", src, source, *extra], env)
        cache = WORK / "cache"
        cold = json.loads(
            run(
                "sync",
                [str(BIN / "tts-inference"), "sync", "--source", source, "--cache-dir", str(cache)],
                env,
            )
        )
        warm = json.loads(
            run(
                "sync again",
                [str(BIN / "tts-inference"), "sync", "--source", source, "--cache-dir", str(cache)],
                env,
            )
        )
        print(
            f"  cold sync fetched {cold['bytesDownloaded']} bytes; the warm sync fetched {warm['bytesDownloaded']} in {warm['seconds']}s"
        )

        print(
            f"\nserver on 127.0.0.1:{api_port} (model loads once, warms up, then /readyz says 200)"
        )
        serve_log = open(WORK / "serve.log", "wb")  # noqa: SIM115
        started = time.monotonic()
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "tts-inference"),
                    "serve",
                    "--model-dir",
                    cold["path"],
                    "--cache-dir",
                    str(cache),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                    "--nfe-step",
                    "16",
                ],
                env=env,
                stdout=serve_log,
                stderr=subprocess.STDOUT,
            )
        )

        def ready() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)

        wait_until("server", ready, 300, procs[-1])
        print(f"  ready after {time.monotonic() - started:.1f}s")

        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key="not-needed")
        t0 = time.monotonic()
        with client.audio.speech.with_streaming_response.create(
            model=name, voice="default", input=SENTENCE, response_format="wav"
        ) as response:
            response.stream_to_file(OUT)
        elapsed = time.monotonic() - t0
        with wave.open(str(OUT)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
            rate = wav.getframerate()
        print(
            f"\nwrote {OUT.relative_to(ROOT)}: {OUT.stat().st_size} bytes, {seconds:.2f} s of audio at {rate} Hz"
        )
        print(f"synthesis took {elapsed:.2f} s: real-time factor {elapsed / seconds:.3f}")
        if model == "tiny":
            print("(the tiny model has random weights: it speaks noise, by design)")
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
