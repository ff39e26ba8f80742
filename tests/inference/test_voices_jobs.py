"""Voices and jobs over HTTP on the fake engine, against moto's S3 behind the fault proxy.

The engine is the fake (a tone per chunk), so these tests cover the API, the
bucket persistence, idempotency, cancellation, priorities and upload faults in
seconds; tests/inference/test_jobs_server.py runs the real server on the tiny model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import require_tool
from tests.inference.test_api import running, wait_ready
from tests.support.media import REFERENCE_TEXT, long_tone_mp3, reference_as, silence_wav
from tests.support.s3 import Fault, S3Server
from tts_inference import audio
from tts_inference.engine.fake import FakeEngine
from tts_inference.jobs import RESULT_SUFFIX, job_id_for
from tts_inference.storage.files import file_lock
from tts_inference.voices import parse_aliases

BUCKET = "tts-api"
OUT = "tts-api-out"
MISSING = "tts-api-missing"  # allowed, but never created: unwritable
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> Iterator[S3Server]:
    """The shared S3 server with this module's buckets, and AWS_* set for in-process servers."""
    client = s3.client(direct=True)
    for name in (BUCKET, OUT):
        client.create_bucket(Bucket=name)
    with s3.in_environ():
        yield s3


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return require_tool("ffmpeg")


@pytest.fixture(scope="module")
def reference(ffmpeg: str) -> tuple[str, bytes]:
    return reference_as(ffmpeg, "flac")


def settings(cache: Path, **extra: Any) -> dict[str, Any]:
    return {
        "cache_dir": cache,
        "voices_uri": f"s3://{BUCKET}/voices/",
        "allowed_buckets": (BUCKET, OUT, MISSING),
        "s3_max_attempts": 2,
        "retry_backoff": 0.05,
        "upload_attempts": 2,
        "upload_part_bytes": 5 * MIB,
        "max_input_chars": 10_000,
        **extra,
    }


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def url(
    bucket: S3Server, engine: FakeEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with running(engine, **settings(tmp_path_factory.mktemp("cache"))) as base:
        wait_ready(base)
        yield base


def upload(
    url: str, name: str, data: bytes, filename: str = "ref.flac", text: str | None = REFERENCE_TEXT
) -> httpx.Response:
    form = {"name": name} if text is None else {"name": name, "text": text}
    return httpx.post(
        f"{url}/v1/voices",
        data=form,
        files={"file": (filename, data, "application/octet-stream")},
        timeout=60,
    )


def post_job(url: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return httpx.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=30)


def wait_job(url: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        if status["state"] in ("succeeded", "failed"):
            return status
        time.sleep(0.05)  # polling the job's state: the API offers no event
    raise TimeoutError(f"job {job_id} did not finish")


def wait_until(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)  # polling an observable condition
    raise TimeoutError(what)


def keys(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    response = s3.client(direct=True).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for item in response.get("Contents", [])]


def get_object(s3: S3Server, bucket: str, key: str) -> bytes:
    body: bytes = s3.client(direct=True).get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _error(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error"}, body
    message: str = body["error"]["message"]
    return message


def sentences(n: int) -> str:
    return " ".join(f"This is sentence number {i} of a long chapter." for i in range(n))


# --------------------------------------------------------------------------- voices


def test_voice_lifecycle_persists_to_the_bucket_and_the_cache(
    url: str, bucket: S3Server, reference: tuple[str, bytes], tmp_path: Path
) -> None:
    filename, data = reference
    created = upload(url, "alice", data, filename)
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["name"] == "alice"
    assert info["text"] == REFERENCE_TEXT
    assert 6.0 < info["seconds"] < 7.0, "silence trimmed, speech kept"
    assert info["sampleRate"] == 24000
    stored = keys(bucket, BUCKET, "voices/alice/")
    assert sorted(k.rsplit("/", 1)[-1] for k in stored) == [
        f"ref-{info['sha256'][:16]}.wav",
        "voice.json",
    ]
    record = json.loads(get_object(bucket, BUCKET, "voices/alice/voice.json"))
    assert record["text"] == REFERENCE_TEXT
    wav = audio.decode(get_object(bucket, BUCKET, f"voices/alice/ref-{info['sha256'][:16]}.wav"))
    assert abs(len(wav) / 24000 - info["seconds"]) < 0.01

    listed = httpx.get(f"{url}/v1/voices").json()
    assert {"default", "alice"} <= {v["name"] for v in listed["data"]}
    assert httpx.get(f"{url}/v1/voices/alice").json()["text"] == REFERENCE_TEXT
    resp = httpx.post(
        f"{url}/v1/audio/speech",
        json={"model": "fake", "input": "Hello.", "voice": "alice", "response_format": "wav"},
    )
    assert resp.status_code == 200

    deleted = httpx.delete(f"{url}/v1/voices/alice")
    assert deleted.status_code == 200
    assert deleted.json() == {"object": "voice.deleted", "name": "alice", "deleted": True}
    assert keys(bucket, BUCKET, "voices/alice/") == []
    assert httpx.get(f"{url}/v1/voices/alice").status_code == 404
    gone = httpx.post(
        f"{url}/v1/audio/speech", json={"model": "fake", "input": "Hi.", "voice": "alice"}
    )
    assert gone.status_code == 404
    assert httpx.delete(f"{url}/v1/voices/alice").status_code == 404


def test_default_voice_is_always_there_and_cannot_be_replaced_or_deleted(
    url: str, reference: tuple[str, bytes]
) -> None:
    assert httpx.get(f"{url}/v1/voices/default").json()["builtin"] is True
    assert upload(url, "default", reference[1]).status_code == 409
    refused = httpx.delete(f"{url}/v1/voices/default")
    assert refused.status_code == 400
    assert "built in" in _error(refused)


def test_an_alias_speaks_with_the_voice_it_maps_to_in_speech_and_jobs(
    bucket: S3Server, reference: tuple[str, bytes], tmp_path: Path
) -> None:
    engine = FakeEngine()
    aliases = parse_aliases(["alloy=narrator", "echo=default,house=narrator"])
    with running(engine, **settings(tmp_path, voice_aliases=aliases)) as base:
        wait_ready(base)
        # Before narrator exists, the alias says what it maps to and how to fix it.
        missing = httpx.post(
            f"{base}/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "alloy"}
        )
        assert missing.status_code == 404
        assert "alias of 'narrator', which does not exist" in _error(missing)
        assert upload(base, "narrator", reference[1], reference[0]).status_code == 201
        taken = upload(base, "alloy", reference[1], reference[0])
        assert taken.status_code == 409
        assert "alias of voice 'narrator'" in _error(taken)
        assert httpx.delete(f"{base}/v1/voices/house").status_code == 400

        for voice in ("alloy", {"id": "house"}):
            resp = httpx.post(
                f"{base}/v1/audio/speech",
                json={"model": "m", "input": "Hi.", "voice": voice, "response_format": "pcm"},
            )
            assert resp.status_code == 200, resp.text
            assert engine.requests[-1].voice.name == "narrator"
        listed = {v["name"]: v["aliases"] for v in httpx.get(f"{base}/v1/voices").json()["data"]}
        assert listed["narrator"] == ["alloy", "house"]
        assert "echo" in listed["default"]
        assert "alloy" not in listed["default"]

        job = post_job(
            base,
            {
                "text": "A job in an alias.",
                "voice": "house",
                "output": {"uri": f"s3://{OUT}/alias.wav"},
            },
        )
        assert job.status_code == 202, job.text
        assert wait_job(base, job.json()["id"])["state"] == "succeeded"
        assert engine.requests[-1].voice.name == "narrator"


@pytest.mark.parametrize("spec", ["alloy", "alloy=", "=narrator", "alloy=../x", "default=narrator"])
def test_a_bad_alias_is_refused_with_its_name(spec: str) -> None:
    with pytest.raises(ValueError, match="--voice-alias"):
        parse_aliases([spec])


@pytest.mark.parametrize(
    ("case", "name", "status", "needle"),
    [
        ("text-renamed-wav", "bad-text", 400, "not audio"),
        ("zero-bytes", "bad-empty", 400, "empty"),
        ("ten-minutes", "bad-long", 400, "too long"),
        ("silent", "bad-silent", 400, "silent"),
        ("over-10-mb", "bad-big", 413, "limit"),
        ("path-traversal", "../../etc/passwd", 400, "invalid voice name"),
        ("slash-name", "a/b", 400, "invalid voice name"),
        ("dot-dot", "..", 400, "invalid voice name"),
        ("too-long-name", "n" * 65, 400, "invalid voice name"),
        ("duplicate", "dup", 409, "already exists"),
        ("no-text-no-asr", "bad-notext", 400, "text is required"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_persisted(
    url: str,
    bucket: S3Server,
    ffmpeg: str,
    reference: tuple[str, bytes],
    case: str,
    name: str,
    status: int,
    needle: str,
) -> None:
    filename, data = reference
    text: str | None = REFERENCE_TEXT
    if case == "text-renamed-wav":
        filename, data = "voice.wav", b"this is a text file, not a wav file\n" * 200
    elif case == "zero-bytes":
        filename, data = "voice.wav", b""
    elif case == "ten-minutes":
        filename, data = "long.mp3", long_tone_mp3(ffmpeg, 600)
    elif case == "silent":
        filename, data = "quiet.wav", silence_wav(ffmpeg, 3)
    elif case == "over-10-mb":
        filename, data = "big.wav", b"\0" * (10 * 1000 * 1000 + 1)
    elif case == "duplicate":
        assert upload(url, "dup", data, filename).status_code in (201, 409)
    elif case == "no-text-no-asr":
        text = None
    before = keys(bucket, BUCKET, "voices/")
    resp = upload(url, name, data, filename, text)
    assert resp.status_code == status, resp.text
    assert needle in _error(resp)
    after = keys(bucket, BUCKET, "voices/")
    assert after == before, "a refused upload must not write to the bucket"
    if case != "duplicate":
        assert name not in {v["name"] for v in httpx.get(f"{url}/v1/voices").json()["data"]}
    # the server keeps serving
    assert httpx.get(f"{url}/v1/voices/default").status_code == 200


def test_voice_uploaded_on_one_server_is_found_by_another_on_an_empty_cache(
    url: str, bucket: S3Server, reference: tuple[str, bytes], tmp_path: Path
) -> None:
    assert upload(url, "shared", reference[1], reference[0]).status_code == 201
    other = FakeEngine()
    with running(other, **settings(tmp_path / "other-cache")) as base:
        wait_ready(base)
        assert "shared" in {v["name"] for v in httpx.get(f"{base}/v1/voices").json()["data"]}
        resp = httpx.post(
            f"{base}/v1/audio/speech",
            json={"model": "fake", "input": "From the bucket.", "voice": "shared"},
        )
        assert resp.status_code == 200, resp.text
        used = [r.voice for r in other.requests if r.text == "From the bucket."]
        assert used[0].text == REFERENCE_TEXT
        assert (tmp_path / "other-cache" / "voices" / "shared" / "ref.wav").is_file()
        metrics = httpx.get(f"{base}/metrics").text
        assert "tts_voice_cache_misses_total 1.0" in metrics
        # deleted through this server: the first server stops serving it after a check
        assert httpx.delete(f"{base}/v1/voices/shared").status_code == 200
    assert keys(bucket, BUCKET, "voices/shared/") == []


FETCH_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tts_inference.storage.bucket import ObjectStore, S3Uri
    from tts_inference.voices import VoiceStore
    store = VoiceStore(Path(sys.argv[1]) / "voices", remote=S3Uri.parse(sys.argv[2]), objects=ObjectStore())
    voice = store.get(sys.argv[3])
    print("loaded", voice.name, len(voice.audio), flush=True)
    """
)


def test_processes_racing_for_one_voice_download_it_once(
    url: str, bucket: S3Server, reference: tuple[str, bytes], tmp_path: Path
) -> None:
    info = upload(url, "raced", reference[1], reference[0]).json()
    wav_key = f"voices/raced/ref-{info['sha256'][:16]}.wav"
    size = len(get_object(bucket, BUCKET, wav_key))
    cache = tmp_path / "shared-cache"
    bucket.traffic.reset()
    procs: list[subprocess.Popen[str]] = []
    # Hold the voice's lock, start three processes, and let go only once all three wait on it.
    with file_lock(cache / ".locks" / "voice-raced.lock", "test", sys.stderr):
        for _ in range(3):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        FETCH_SCRIPT,
                        str(cache),
                        f"s3://{BUCKET}/voices/",
                        "raced",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**bucket.env()},
                )
            )
        lines: list[str] = []

        def waiting() -> bool:
            for proc in procs:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            return sum("waiting: another process" in line for line in lines) == 3

        readers = [
            threading.Thread(
                target=lambda p=proc: lines.extend(iter(p.stderr.readline, "")), daemon=True
            )
            for proc in procs
            if proc.stderr is not None
        ]
        for reader in readers:
            reader.start()
        wait_until(waiting, "three processes waiting on the voice lock", timeout=60)
    outputs = [proc.stdout.read() if proc.stdout else "" for proc in procs]
    assert all(proc.wait(timeout=60) == 0 for proc in procs), lines
    assert all(out.startswith("loaded raced") for out in outputs), outputs
    assert bucket.traffic.bytes_for(lambda k: k.endswith(wav_key)) == size, "downloaded once"
    assert bucket.traffic.requests[("GET", f"/{BUCKET}/{wav_key}")] == 1


def test_asr_transcribes_uploads_without_text_when_a_model_is_present(
    bucket: S3Server, reference: tuple[str, bytes], tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []

    def transcribe(samples: np.ndarray, rate: int) -> str:
        calls.append((len(samples), rate))
        return "words the fake recogniser heard"

    from tts_inference.app import build_app
    from tts_inference.settings import ServerSettings

    engine = FakeEngine()
    app = build_app(
        ServerSettings(model_dir=Path("/nonexistent"), cache_dir=tmp_path),
        lambda _: engine,
        transcriber_factory=lambda _: transcribe,
    )
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, "ready")
        resp = client.post(
            "/v1/voices",
            data={"name": "heard"},
            files={"file": (reference[0], reference[1], "audio/flac")},
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["text"] == "words the fake recogniser heard"
        assert len(calls) == 1
        assert calls[0][1] == 24000
        assert 6.0 < calls[0][0] / 24000 < 7.0, "the trimmed reference is transcribed"
        assert (tmp_path / "voices" / "heard" / "ref.txt").read_text() == (
            "words the fake recogniser heard"
        )


# --------------------------------------------------------------------------- jobs


def test_job_lifecycle_end_to_end(url: str, bucket: S3Server, engine: FakeEngine) -> None:
    text = sentences(12)
    resp = post_job(
        url,
        {
            "text": text,
            "voice": "default",
            "output": {"uri": f"s3://{OUT}/outputs/ns/lifecycle/", "format": "wav"},
            "params": {"speed": 1.0, "nfeStep": 4, "seed": 3},
        },
        key="uid-lifecycle",
    )
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    job_id = accepted["id"]
    assert job_id == job_id_for("uid-lifecycle")
    assert accepted["state"] in ("queued", "running")
    status = wait_job(url, job_id)
    assert status["state"] == "succeeded", status
    key = f"outputs/ns/lifecycle/{job_id}.wav"
    assert status["outputUri"] == f"s3://{OUT}/{key}"
    assert status["progress"] == 1.0
    assert status["chunksDone"] == status["chunksTotal"] > 2
    assert status["rtf"] > 0
    assert status["error"] is None
    assert set(status["timings"]) >= {"queuedSeconds", "synthesisSeconds", "uploadSeconds"}
    wave = audio.decode(get_object(bucket, OUT, key))
    assert abs(len(wave) / 24000 - status["audioSeconds"]) < 0.01
    chunks = engine.split_text(text, None, None)  # type: ignore[arg-type]
    expected = audio.crossfade(
        [np.zeros(FakeEngine.samples_for(c), np.float32) for c in chunks], 24000
    )
    assert abs(len(wave) - len(expected)) <= 1
    job_requests = [r for r in engine.requests if r.text in chunks]
    assert all(r.params.nfe_step == 4 for r in job_requests)
    result = json.loads(get_object(bucket, OUT, key + RESULT_SUFFIX))
    assert result["state"] == "succeeded"
    assert result["id"] == job_id
    record = json.loads(get_object(bucket, BUCKET, f"jobs/{job_id}.json"))
    assert record["state"] == "succeeded"
    assert record["outputUri"] == status["outputUri"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'tts_jobs_finished_total{outcome="succeeded"}' in metrics
    assert "tts_job_duration_seconds_bucket" in metrics
    assert 'tts_upload_bytes_total{what="job_output"}' in metrics


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_every_job_format_decodes(url: str, bucket: S3Server, fmt: str) -> None:
    resp = post_job(
        url,
        {
            "text": sentences(3),
            "output": {"uri": f"s3://{OUT}/formats/out-{fmt}.{fmt}"},
        },
    )
    assert resp.status_code == 202, resp.text
    status = wait_job(url, resp.json()["id"])
    assert status["state"] == "succeeded", status
    assert status["format"] == fmt, "the format follows the key's extension"
    wave = audio.decode(get_object(bucket, OUT, f"formats/out-{fmt}.{fmt}"))
    assert abs(len(wave) / 24000 - status["audioSeconds"]) < 0.1


def test_text_from_the_bucket(url: str, bucket: S3Server) -> None:
    bucket.client(direct=True).put_object(
        Bucket=BUCKET, Key="texts/chapter.txt", Body=sentences(5).encode()
    )
    resp = post_job(
        url,
        {"textUri": f"s3://{BUCKET}/texts/chapter.txt", "output": {"uri": f"s3://{OUT}/t/"}},
    )
    status = wait_job(url, resp.json()["id"])
    assert status["state"] == "succeeded", status


@pytest.mark.parametrize(
    ("case", "body", "needle"),
    [
        (
            "unknown-voice",
            {"text": "Hello.", "voice": "nobody", "output": {"uri": f"s3://{OUT}/f/"}},
            "unknown voice 'nobody'",
        ),
        (
            "missing-text-object",
            {"textUri": f"s3://{BUCKET}/texts/missing.txt", "output": {"uri": f"s3://{OUT}/f/"}},
            "could not read textUri",
        ),
        (
            "unwritable-bucket",
            {"text": "Hello there.", "output": {"uri": f"s3://{MISSING}/out.wav"}},
            "NoSuchBucket",
        ),
    ],
)
def test_failing_jobs_say_why(
    url: str, bucket: S3Server, case: str, body: dict[str, Any], needle: str
) -> None:
    resp = post_job(url, body)
    assert resp.status_code == 202, resp.text
    status = wait_job(url, resp.json()["id"])
    assert status["state"] == "failed"
    assert needle in status["error"], status["error"]
    assert status["outputUri"]
    record = json.loads(get_object(bucket, BUCKET, f"jobs/{status['id']}.json"))
    assert record["state"] == "failed"
    assert needle in record["error"]


def test_undecodable_text_fails_the_job(url: str, bucket: S3Server) -> None:
    bucket.client(direct=True).put_object(
        Bucket=BUCKET, Key="texts/binary.txt", Body=b"\xff\xfe\x00bad"
    )
    resp = post_job(
        url, {"textUri": f"s3://{BUCKET}/texts/binary.txt", "output": {"uri": f"s3://{OUT}/f/"}}
    )
    status = wait_job(url, resp.json()["id"])
    assert status["state"] == "failed"
    assert "not UTF-8" in status["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"voice": "default", "output": {"uri": f"s3://{OUT}/x/"}}, "exactly one of text"),
        (
            {"text": "a", "textUri": f"s3://{BUCKET}/t", "output": {"uri": f"s3://{OUT}/x/"}},
            "exactly one of text",
        ),
        ({"text": "   ", "output": {"uri": f"s3://{OUT}/x/"}}, "text is empty"),
        ({"text": "a", "output": {"uri": "s3://elsewhere/x/"}}, "not allowed"),
        ({"text": "a", "output": {"uri": "/tmp/out.wav"}}, "s3://"),
        ({"text": "a", "output": {"uri": "https://example.com/x.wav"}}, "s3://"),
        ({"textUri": "file:///etc/passwd", "output": {"uri": f"s3://{OUT}/x/"}}, "s3://"),
        ({"textUri": "s3://elsewhere/t.txt", "output": {"uri": f"s3://{OUT}/x/"}}, "not allowed"),
        ({"text": "a", "output": {"uri": f"s3://{OUT}/x/", "format": "aac"}}, "output.format"),
        ({"text": "a", "voice": "../x", "output": {"uri": f"s3://{OUT}/x/"}}, "voice"),
        ({"text": "a", "output": {"uri": f"s3://{OUT}/x/"}, "params": {"speed": 9}}, "speed"),
        ({"text": "a", "output": {"uri": f"s3://{OUT}/x/"}, "bogus": 1}, "bogus"),
    ],
)
def test_bad_job_requests_are_400(url: str, body: dict[str, Any], needle: str) -> None:
    resp = post_job(url, body)
    assert resp.status_code == 400, resp.text
    assert needle in _error(resp)


def test_the_same_key_never_runs_twice(url: str, engine: FakeEngine) -> None:
    body = {"text": "Only once, please. Really only once.", "output": {"uri": f"s3://{OUT}/once/"}}
    first = post_job(url, body, key="uid-once")
    second = post_job(url, body, key="uid-once")
    assert first.status_code == second.status_code == 202
    assert second.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]
    status = wait_job(url, first.json()["id"])
    assert status["state"] == "succeeded"
    third = post_job(url, body, key="uid-once")
    assert third.json()["state"] == "succeeded"
    assert third.json()["outputUri"] == status["outputUri"]
    ran = [r for r in engine.requests if r.text.startswith("Only once")]
    assert len(ran) == 1
    reused = post_job(url, {**body, "text": "Something else."}, key="uid-once")
    assert reused.status_code == 409
    assert "Idempotency-Key" in _error(reused)


def test_unknown_job_is_404(url: str) -> None:
    assert httpx.get(f"{url}/v1/jobs/{'0' * 32}").status_code == 404
    assert httpx.get(f"{url}/v1/jobs/..%2F..%2Fetc").status_code == 404
    assert httpx.delete(f"{url}/v1/jobs/{'1' * 32}").status_code == 404


class GatedEngine(FakeEngine):
    """Blocks batches holding a request whose text contains 'GATE' until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gated = threading.Event()

    def synthesize_batch(self, requests: Any) -> list[Any]:
        if any("GATE" in r.text for r in requests):
            self.gated.set()
            self.gate.wait(60)
        return super().synthesize_batch(requests)


def test_cancel_stops_a_running_job_and_writes_nothing(bucket: S3Server, tmp_path: Path) -> None:
    engine = GatedEngine()
    with running(engine, **settings(tmp_path, max_batch=1)) as base:
        wait_ready(base)
        resp = post_job(
            base,
            {"text": "GATE holds here. " + sentences(4), "output": {"uri": f"s3://{OUT}/cancel/"}},
        )
        job_id = resp.json()["id"]
        assert engine.gated.wait(10)
        assert httpx.get(f"{base}/v1/jobs/{job_id}").json()["state"] == "running"
        cancelled = httpx.delete(f"{base}/v1/jobs/{job_id}", timeout=30)
        assert cancelled.status_code == 200
        status = cancelled.json()
        assert status["state"] == "failed"
        assert status["cancelled"] is True
        assert "cancelled" in status["error"]
        engine.gate.set()
        assert httpx.get(f"{base}/v1/jobs/{job_id}").json()["state"] == "failed"
        assert keys(bucket, OUT, "cancel/") == []
        # a finished job is not changed by DELETE
        assert httpx.delete(f"{base}/v1/jobs/{job_id}").json()["state"] == "failed"
        assert (
            'tts_jobs_finished_total{outcome="cancelled"} 1.0' in httpx.get(f"{base}/metrics").text
        )


def test_a_voice_in_use_by_a_job_cannot_be_deleted(
    bucket: S3Server, reference: tuple[str, bytes], tmp_path: Path
) -> None:
    engine = GatedEngine()
    with running(engine, **settings(tmp_path)) as base:
        wait_ready(base)
        assert upload(base, "busy", reference[1], reference[0]).status_code == 201
        resp = post_job(
            base, {"text": "GATE. Then more.", "voice": "busy", "output": {"uri": f"s3://{OUT}/b/"}}
        )
        assert engine.gated.wait(10)
        refused = httpx.delete(f"{base}/v1/voices/busy")
        assert refused.status_code == 409
        assert "used by 1" in _error(refused)
        engine.gate.set()
        assert wait_job(base, resp.json()["id"])["state"] == "succeeded"
        assert httpx.delete(f"{base}/v1/voices/busy").status_code == 200


def test_live_requests_go_before_queued_job_chunks(bucket: S3Server, tmp_path: Path) -> None:
    engine = GatedEngine()
    with running(engine, **settings(tmp_path, max_batch=1, max_queue=4)) as base:
        wait_ready(base)
        resp = post_job(
            base, {"text": "GATE first. " + sentences(6), "output": {"uri": f"s3://{OUT}/prio/"}}
        )
        assert engine.gated.wait(10)  # the job's first chunk holds the device
        wait_until(
            lambda: "tts_queue_depth 1.0" in httpx.get(f"{base}/metrics").text,
            "the job's next chunk waiting",
        )
        live: list[int] = []
        thread = threading.Thread(
            target=lambda: live.append(
                httpx.post(
                    f"{base}/v1/audio/speech",
                    json={"model": "fake", "input": "Live words.", "voice": "default"},
                    timeout=60,
                ).status_code
            )
        )
        thread.start()
        wait_until(
            lambda: "tts_queue_depth 2.0" in httpx.get(f"{base}/metrics").text,
            "the live request waiting",
        )
        engine.gate.set()
        thread.join(timeout=60)
        assert live == [200]
        assert wait_job(base, resp.json()["id"])["state"] == "succeeded"
        texts = [r.text for r in engine.requests]
        first = next(i for i, t in enumerate(texts) if t.startswith("GATE"))
        assert texts[first + 1] == "Live words.", texts[first : first + 3]


def _big_job(prefix: str) -> dict[str, Any]:
    # ~7,000 characters of fake speech: ~140 s of wav, over 5 MiB, so a multipart upload.
    return {"text": sentences(150), "output": {"uri": f"s3://{OUT}/{prefix}/", "format": "wav"}}


def test_upload_errors_are_retried(url: str, bucket: S3Server) -> None:
    bucket.traffic.reset()
    fault = bucket.proxy.add_fault(
        Fault(method="PUT", key_contains=f"/{OUT}/retried/", status=500, times=2)
    )
    try:
        status = wait_job(url, post_job(url, _big_job("retried")).json()["id"])
    finally:
        bucket.proxy.clear_faults()
    assert status["state"] == "succeeded", status
    assert fault.hits == 2
    key = status["outputUri"].split("/", 3)[3]
    data = get_object(bucket, OUT, key)
    assert len(data) > 5 * MIB
    assert abs(len(audio.decode(data)) / 24000 - status["audioSeconds"]) < 0.01


def test_persistent_upload_errors_fail_the_job_and_leave_no_object(
    url: str, bucket: S3Server
) -> None:
    fault = bucket.proxy.add_fault(
        Fault(method="PUT", key_contains=f"/{OUT}/doomed/", status=500, times=-1)
    )
    try:
        status = wait_job(url, post_job(url, _big_job("doomed")).json()["id"])
    finally:
        bucket.proxy.clear_faults()
    assert status["state"] == "failed", status
    assert "uploading the output" in status["error"]
    assert "500" in status["error"]
    assert fault.hits >= 2, "the upload was retried before giving up"
    assert keys(bucket, OUT, "doomed/") == [], "no object, no result record"
    uploads = bucket.client(direct=True).list_multipart_uploads(Bucket=OUT, Prefix="doomed/")
    assert uploads.get("Uploads", []) == [], "the multipart upload was aborted"


# --------------------------------------------------------------------------- restarts


def test_a_restarted_server_reports_the_finished_job_and_does_not_rerun_it(
    bucket: S3Server, tmp_path: Path
) -> None:
    body = {"text": sentences(3), "output": {"uri": f"s3://{OUT}/restart/out.mp3"}}
    first = FakeEngine()
    with running(first, **settings(tmp_path / "a")) as base:
        wait_ready(base)
        job_id = post_job(base, body, key="uid-restart").json()["id"]
        done = wait_job(base, job_id)
        assert done["state"] == "succeeded"
    second = FakeEngine()
    with running(second, **settings(tmp_path / "b")) as base:
        wait_ready(base)
        after = httpx.get(f"{base}/v1/jobs/{job_id}").json()
        assert after["state"] == "succeeded"
        assert after["outputUri"] == done["outputUri"] == f"s3://{OUT}/restart/out.mp3"
        assert after["audioSeconds"] == done["audioSeconds"]
        again = post_job(base, body, key="uid-restart")
        assert again.status_code == 202
        assert again.json()["id"] == job_id
        assert again.json()["state"] == "succeeded"
        assert [r for r in second.requests if "sentence" in r.text] == []


def test_an_interrupted_job_is_retryable_with_the_same_key(
    bucket: S3Server, tmp_path: Path
) -> None:
    body = {"text": "GATE stops here. And goes on.", "output": {"uri": f"s3://{OUT}/interrupt/"}}
    job_id = job_id_for("uid-interrupt")
    engine = GatedEngine()

    def record_state() -> str | None:
        try:
            state: str = json.loads(get_object(bucket, BUCKET, f"jobs/{job_id}.json"))["state"]
        except Exception:
            return None
        return state

    with running(engine, **settings(tmp_path / "a")) as base:
        wait_ready(base)
        post_job(base, body, key="uid-interrupt")
        assert engine.gated.wait(10)

        # Shutting down interrupts the job; the device thread finishes once the record is out.
        def open_gate_once_recorded() -> None:
            wait_until(lambda: record_state() == "failed", "the interrupted record")
            engine.gate.set()

        opener = threading.Thread(target=open_gate_once_recorded, daemon=True)
        opener.start()
    opener.join(timeout=30)
    record = json.loads(get_object(bucket, BUCKET, f"jobs/{job_id}.json"))
    assert record["state"] == "failed"
    assert record["retryable"] is True
    assert "interrupted" in record["error"]
    with running(FakeEngine(), **settings(tmp_path / "b")) as base:
        wait_ready(base)
        assert httpx.get(f"{base}/v1/jobs/{job_id}").json()["retryable"] is True
        again = post_job(base, body, key="uid-interrupt")
        assert again.json()["id"] == job_id
        assert again.json()["attempts"] == 2
        assert wait_job(base, job_id)["state"] == "succeeded"


def test_a_stale_running_record_is_reported_interrupted(bucket: S3Server, url: str) -> None:
    job_id = job_id_for("uid-stale")
    record = {
        "id": job_id,
        "state": "running",
        "outputUri": f"s3://{OUT}/stale/{job_id}.wav",
        "owner": "gone-pod/1/abcdef",
        "updatedAt": "2020-01-01T00:00:00.000000Z",
        "attempts": 1,
    }
    bucket.client(direct=True).put_object(
        Bucket=BUCKET, Key=f"jobs/{job_id}.json", Body=json.dumps(record).encode()
    )
    status = httpx.get(f"{url}/v1/jobs/{job_id}").json()
    assert status["state"] == "failed"
    assert status["retryable"] is True
    assert "gone-pod" in status["error"]


def test_a_stale_record_whose_output_exists_is_reported_succeeded(
    bucket: S3Server, url: str
) -> None:
    """The process died after the upload but before its records: the audio says it succeeded."""
    job_id = job_id_for("uid-died-late")
    key = f"stale/{job_id}.wav"
    bucket.client(direct=True).put_object(
        Bucket=OUT,
        Key=key,
        Body=audio.encode(np.zeros(2400, np.float32), 24000, "wav"),
        Metadata={"tts-job-id": job_id, "tts-audio-seconds": "0.100"},
    )
    record = {
        "id": job_id,
        "state": "running",
        "outputUri": f"s3://{OUT}/{key}",
        "updatedAt": "2020-01-01T00:00:00.000000Z",
    }
    bucket.client(direct=True).put_object(
        Bucket=BUCKET, Key=f"jobs/{job_id}.json", Body=json.dumps(record).encode()
    )
    status = httpx.get(f"{url}/v1/jobs/{job_id}").json()
    assert status["state"] == "succeeded"
    assert status["audioSeconds"] == 0.1


def test_a_failed_bucket_write_stores_no_voice(
    url: str, bucket: S3Server, reference: tuple[str, bytes]
) -> None:
    fault = bucket.proxy.add_fault(
        Fault(method="PUT", key_contains="/voices/unlucky/voice.json", status=500, times=-1)
    )
    try:
        resp = upload(url, "unlucky", reference[1], reference[0])
    finally:
        bucket.proxy.clear_faults()
    assert resp.status_code == 503, resp.text
    assert "could not store voice 'unlucky'" in _error(resp)
    assert fault.hits >= 2, "retried before giving up"
    assert keys(bucket, BUCKET, "voices/unlucky/") == [], "the audio written first is removed"
    assert httpx.get(f"{url}/v1/voices/unlucky").status_code == 404
    assert upload(url, "unlucky", reference[1], reference[0]).status_code == 201


def test_a_voice_deleted_through_another_replica_stops_being_served(
    bucket: S3Server, reference: tuple[str, bytes], tmp_path: Path
) -> None:
    from tts_inference.errors import BadRequest
    from tts_inference.storage.bucket import ObjectStore, S3Uri
    from tts_inference.voices import VoiceLimits, VoiceStore

    now = [0.0]
    remote = S3Uri.parse(f"s3://{BUCKET}/voices/")

    def store(name: str) -> VoiceStore:
        return VoiceStore(
            tmp_path / name / "voices",
            remote=remote,
            objects=ObjectStore(lambda: bucket.client()),
            limits=VoiceLimits(revalidate_seconds=30),
            clock=lambda: now[0],
        )

    one, two = store("one"), store("two")
    one.create("replicated", reference[1], REFERENCE_TEXT)
    assert two.get("replicated").text == REFERENCE_TEXT
    one.delete("replicated")
    assert two.get("replicated").text == REFERENCE_TEXT, "served from memory within the window"
    now[0] += 31
    with pytest.raises(BadRequest, match="unknown voice 'replicated'"):
        two.get("replicated")
    assert not (tmp_path / "two" / "voices" / "replicated").exists()
    # A restart on a warm cache checks the bucket before serving a voice that came from it.
    one.create("replicated", reference[1], REFERENCE_TEXT)
    assert two.get("replicated").text == REFERENCE_TEXT
    one.delete("replicated")
    one.create("replicated", reference[1], "Another text.")
    assert (tmp_path / "two" / "voices" / "replicated" / "ref.txt").read_text() == REFERENCE_TEXT
    assert store("two").get("replicated").text == "Another text."


def test_a_chunked_body_over_the_limit_is_refused(url: str) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": "fake", "voice": "default", "input": "'
        for _ in range(40):
            yield b"a" * 50_000
        yield b'"}'

    resp = httpx.post(
        f"{url}/v1/audio/speech",
        content=body(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 413
    assert "limit" in _error(resp)


def test_another_replica_reports_and_cancels_a_running_job(
    bucket: S3Server, tmp_path: Path
) -> None:
    engine = GatedEngine()
    fast = {"job_heartbeat_seconds": 0.2}
    with (
        running(engine, **settings(tmp_path / "a", **fast)) as a,
        running(FakeEngine(), **settings(tmp_path / "b", **fast)) as b,
    ):
        wait_ready(a)
        wait_ready(b)
        job_id = post_job(
            a, {"text": "GATE waits. Then more.", "output": {"uri": f"s3://{OUT}/replica/"}}
        ).json()["id"]
        assert engine.gated.wait(10)
        wait_until(
            lambda: httpx.get(f"{b}/v1/jobs/{job_id}").json()["state"] == "running",
            "replica b sees the job running",
        )
        asked = httpx.delete(f"{b}/v1/jobs/{job_id}", timeout=30)
        assert asked.status_code == 200
        assert asked.json()["state"] == "running", "b asked a to cancel; a decides"
        wait_until(
            lambda: httpx.get(f"{a}/v1/jobs/{job_id}").json()["state"] == "failed",
            "replica a cancels on its next heartbeat",
        )
        engine.gate.set()
        status = httpx.get(f"{a}/v1/jobs/{job_id}").json()
        assert status["cancelled"] is True
        wait_until(
            lambda: httpx.get(f"{b}/v1/jobs/{job_id}").json()["state"] == "failed",
            "b reads the final record",
        )
        assert keys(bucket, OUT, "replica/") == []
