"""`tts-inference run-job`: the batch TTSJob pod, on the tiny model, against moto's S3.

The command lines are the operator's own (``run_job_command``), with the model
and cache paths pointed at temporary folders. What is asserted is what a user
sees: the objects in the bucket, the decoded audio, the summary line, the
termination message and the exit code. The last tests cover a job's own
reference clip on the server's POST /v1/jobs (fake engine).
"""

from __future__ import annotations

import io
import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf  # type: ignore[import-untyped]

from tests.conftest import require_tool
from tests.inference.test_api import running, wait_ready
from tests.inference.test_voices_jobs import post_job, wait_job
from tests.support.media import REFERENCE_TEXT, reference_as
from tests.support.s3 import S3Server, free_port
from tts_inference import audio, runjob
from tts_inference.engine.fake import FakeEngine
from tts_inference.jobs import sink as jobs
from tts_operator.builders.objects import run_job_command

BUCKET = "tts-runjob"
NO_BUCKET = "tts-runjob-nowhere"  # never created
MIB = 1024 * 1024
CHAPTER = " ".join(
    f"Paragraph {i} of the chapter says a few words, then a few more, and stops here."
    for i in range(10)
)


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> Iterator[S3Server]:
    """This module's bucket with a text, a reference clip and a file that is not audio;
    AWS_* set for the in-process runs and servers."""
    client = s3.client(direct=True)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="texts/chapter.txt", Body=CHAPTER.encode())
    _, clip = reference_as(require_tool("ffmpeg"), "flac")
    client.put_object(Bucket=BUCKET, Key="clips/narrator.flac", Body=clip)
    client.put_object(Bucket=BUCKET, Key="clips/notes.wav", Body=b"not audio at all\n" * 100)
    with s3.in_environ():
        yield s3


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_inference.tiny_model import make_model

    require_tool("ffmpeg")
    return make_model(tmp_path_factory.mktemp("tiny") / "model")


def tts_job(name: str = "chapter-one", **spec: Any) -> dict[str, Any]:
    """A TTSJob as the operator reads it."""
    body: dict[str, Any] = {
        "textFrom": f"s3://{BUCKET}/texts/chapter.txt",
        "voice": {"name": "default"},
        "output": {"uri": f"s3://{BUCKET}/outputs/default/", "format": "wav"},
        "params": {"nfeStep": 2, "seed": 7},
    }
    body.update(spec)
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"}, "spec": body}


def command_line(job: dict[str, Any], model: Path, cache: Path, log: Path) -> list[str]:
    """The operator's command line for ``job``, on this machine's model and cache folders."""
    cmd = list(run_job_command(job))
    assert cmd[:2] == ["tts-inference", "run-job"]
    cmd[cmd.index("--model-dir") + 1] = str(model)
    cmd[cmd.index("--cache-dir") + 1] = str(cache)
    return [*cmd, "--termination-log", str(log)]


def in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``tts-inference run-job`` in this process: (exit code, last stdout line)."""
    assert argv[:2] == ["tts-inference", "run-job"]
    code = runjob.main(argv[2:])
    out = capsys.readouterr().out.strip().splitlines()
    return code, out[-1] if out else ""


def keys(s3: S3Server, prefix: str) -> list[str]:
    response = s3.client(direct=True).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in response.get("Contents", []))


def get(s3: S3Server, key: str) -> bytes:
    body: bytes = s3.client(direct=True).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def wav_samples(data: bytes) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000
    return np.asarray(samples)


# --------------------------------------------------------------------------- the pod


@pytest.mark.slow
def test_the_operators_command_writes_the_audio_once_and_reports_it(
    bucket: S3Server, model: Path, tmp_path: Path, tts_inference: list[str]
) -> None:
    log = tmp_path / "termination-log"
    cmd = command_line(tts_job(), model, tmp_path / "cache", log)
    cmd[0] = tts_inference[0]
    first = subprocess.run(cmd, env=bucket.env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert json.loads(log.read_text()) == summary
    key = "outputs/default/chapter-one.wav"  # the prefix and the TTSJob's name
    assert summary["outputUri"] == f"s3://{BUCKET}/{key}"
    assert summary["part"] == 0
    assert summary["parts"] == 1
    assert summary["joined"] is True
    assert summary["chunks"] > 1, "the chapter was split"
    assert summary["rtf"] > 0
    wave = audio.decode(get(bucket, key))
    assert abs(len(wave) / 24000 - summary["audioSeconds"]) < 0.05
    assert summary["audioSeconds"] > 5
    result = json.loads(get(bucket, key + ".tts-job.json"))
    assert result["state"] == "succeeded"
    assert result["id"] == "chapter-one"
    stored = bucket.client(direct=True).head_object(Bucket=BUCKET, Key=key)

    bucket.traffic.reset()
    log.unlink()
    again = subprocess.run(cmd, env=bucket.env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1]) == summary
    assert json.loads(log.read_text()) == summary
    assert bucket.traffic.requests[("PUT", f"/{BUCKET}/{key}")] == 0, "no second upload"
    assert bucket.traffic.bytes_for(lambda k: k.endswith("texts/chapter.txt")) == 0
    head = bucket.client(direct=True).head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"] == stored["ETag"]
    assert head["LastModified"] == stored["LastModified"]


@pytest.mark.slow
def test_three_parts_in_any_order_join_into_the_audio_of_one_run(
    bucket: S3Server, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    log = tmp_path / "termination-log"
    one = tts_job("single", output={"uri": f"s3://{BUCKET}/parts-single/", "format": "wav"})
    code, line = in_process(command_line(one, model, cache, log), capsys)
    assert code == 0, log.read_text()
    single = json.loads(line)
    assert single["chunks"] >= 3, "enough chunks for three parts"

    job = tts_job("split", output={"uri": f"s3://{BUCKET}/parts/", "format": "wav"})
    cmd = [*command_line(job, model, cache, log), "--part-count", "3"]
    order = [0, 1, 2]
    random.shuffle(order)
    summaries: dict[int, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as mp:
        for n, index in enumerate(order):
            if n == 2:  # a pod that runs again finds its part and does not synthesize it again
                mp.setenv("JOB_COMPLETION_INDEX", str(order[0]))
                part_key = f"parts/split.wav.parts/{order[0]}-of-3.wav"
                bucket.traffic.reset()
                code, line = in_process(cmd, capsys)
                assert code == 0, log.read_text()
                assert json.loads(line) == summaries[order[0]]
                assert bucket.traffic.requests[("PUT", f"/{BUCKET}/{part_key}")] == 0
            mp.setenv("JOB_COMPLETION_INDEX", str(index))
            code, line = in_process(cmd, capsys)
            assert code == 0, (order, log.read_text())
            summaries[index] = json.loads(line)
            assert json.loads(log.read_text()) == summaries[index]
    joined = [s for s in summaries.values() if s["joined"]]
    assert len(joined) == 1, (order, summaries)
    assert joined[0] == summaries[order[-1]], "the last pod finds every part and joins"
    for index, summary in summaries.items():
        assert summary["part"] == index
        assert summary["parts"] == 3
        if not summary["joined"]:
            assert summary["partUri"] == f"s3://{BUCKET}/parts/split.wav.parts/{index}-of-3.wav"
    final = joined[0]
    assert final["outputUri"] == f"s3://{BUCKET}/parts/split.wav"
    assert final["chunks"] == single["chunks"]
    assert keys(bucket, "parts/") == ["parts/split.wav", "parts/split.wav.tts-job.json"]
    split = wav_samples(get(bucket, "parts/split.wav"))
    whole = wav_samples(get(bucket, "parts-single/single.wav"))
    assert len(split) == len(whole)
    assert abs(final["audioSeconds"] - single["audioSeconds"]) < 0.01
    assert np.allclose(split, whole, atol=5e-4), float(np.abs(split - whole).max())
    assert np.abs(whole).max() > 0.01, "not silence"


def test_parts_joined_block_by_block_equal_the_chunks_joined_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join's arithmetic without a model: loud chunks (clipped only at the end), an
    empty part, and parts read in blocks much smaller than a part."""
    monkeypatch.setattr(jobs, "JOIN_BLOCK", 997)
    rng = np.random.default_rng(7)
    chunks = [
        (1.5 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 12000, 8000, 15000, 7600)
    ]
    whole = jobs.AudioSink(str(tmp_path / "whole.wav"), "wav", 24000)
    for chunk in chunks:
        whole.push(chunk)
    whole.close()
    files = []
    for i, (lo, hi) in enumerate([(0, 2), (2, 2), (2, 3), (3, 5)]):
        path = str(tmp_path / f"{i}.wav")
        part = jobs.AudioSink(path, "wav", 24000, lossless=True)
        for chunk in chunks[lo:hi]:
            part.push(chunk)
        part.close()
        files.append(path)
    joined = jobs.AudioSink(str(tmp_path / "joined.wav"), "wav", 24000)
    for path in files:
        joined.push_file(path)
    joined.close()
    expected = wav_samples((tmp_path / "whole.wav").read_bytes())
    got = wav_samples((tmp_path / "joined.wav").read_bytes())
    assert len(got) == len(expected) == joined.samples
    assert np.abs(got - expected).max() <= 1 / 32768 + 1e-9
    assert np.abs(expected).max() > 0.99, "the loud chunks were clipped once, at the end"


@pytest.mark.parametrize(
    ("case", "spec", "needle"),
    [
        ("unknown-voice", {"voice": {"name": "nobody"}}, "unknown voice 'nobody'"),
        (
            "missing-text-object",
            {"textFrom": f"s3://{BUCKET}/texts/missing.txt"},
            f"could not read textUri s3://{BUCKET}/texts/missing.txt: 404",
        ),
        (
            "ref-audio-404",
            {"voice": {"refAudio": f"s3://{BUCKET}/clips/missing.wav", "refText": "Hello."}},
            f"could not read refAudio s3://{BUCKET}/clips/missing.wav: 404",
        ),
        (
            "ref-audio-not-audio",
            {"voice": {"refAudio": f"s3://{BUCKET}/clips/notes.wav", "refText": "Hello."}},
            "the file is not audio",
        ),
        (
            "ref-audio-without-text-or-asr",
            {"voice": {"refAudio": f"s3://{BUCKET}/clips/narrator.flac"}},
            "refText is required",
        ),
        (
            "output-bucket-missing",
            {"output": {"uri": f"s3://{NO_BUCKET}/outputs/", "format": "wav"}},
            f"the output bucket '{NO_BUCKET}' does not exist",
        ),
        ("empty-text", {"textFrom": None, "text": "   "}, "text is empty"),
        ("not-an-s3-uri", {"textFrom": "https://example.com/t.txt"}, "s3://"),
    ],
)
def test_bad_input_exits_2_says_why_and_writes_nothing(
    bucket: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    spec: dict[str, Any],
    needle: str,
) -> None:
    log = tmp_path / "termination-log"
    job = tts_job(f"bad-{case}", **spec)
    # No model folder: the inputs are checked before a model is loaded.
    code, line = in_process(
        command_line(job, tmp_path / "no-model", tmp_path / "cache", log), capsys
    )
    assert code == 2, log.read_text()
    message = log.read_text()
    assert message.startswith("run-job failed: "), message
    assert needle in message, message
    assert "\n" not in message.strip()
    assert "testing-secret-key" not in message
    assert line == "", "no summary on failure"
    assert keys(bucket, f"outputs/default/bad-{case}") == []


def test_an_unreachable_bucket_exits_1(
    bucket: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    log = tmp_path / "termination-log"
    cmd = command_line(tts_job("offline"), tmp_path / "no-model", tmp_path / "cache", log)
    code, _ = in_process([*cmd, "--s3-max-attempts", "2"], capsys)
    assert code == 1, "worth a retry"
    message = log.read_text()
    assert message.startswith("run-job failed: "), message
    assert f"EndpointConnectionError on s3://{BUCKET}/outputs/default/offline.wav" in message


# --------------------------------------------------------------------------- POST /v1/jobs with refAudio


@pytest.fixture(scope="module")
def server(
    bucket: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, FakeEngine]]:
    engine = FakeEngine()
    settings = {
        "cache_dir": tmp_path_factory.mktemp("server-cache"),
        "allowed_buckets": (BUCKET,),
        "s3_max_attempts": 2,
    }
    with running(engine, **settings) as url:
        wait_ready(url)
        yield url, engine


def test_a_job_speaks_with_its_own_reference_clip(
    server: tuple[str, FakeEngine], bucket: S3Server
) -> None:
    url, engine = server
    clip = f"s3://{BUCKET}/clips/narrator.flac"
    bucket.traffic.reset()
    ids = []
    for name in ("clip-a", "clip-b"):
        body = {
            "text": "Words in the narrator's voice. And a few more.",
            "voice": {"refAudio": clip, "refText": REFERENCE_TEXT},
            "output": {"uri": f"s3://{BUCKET}/clip-jobs/{name}.wav"},
        }
        resp = post_job(url, body, key=f"uid-{name}")
        assert resp.status_code == 202, resp.text
        status = wait_job(url, resp.json()["id"])
        assert status["state"] == "succeeded", status
        assert status["voice"] == clip
        wave = audio.decode(get(bucket, f"clip-jobs/{name}.wav"))
        assert abs(len(wave) / 24000 - status["audioSeconds"]) < 0.05
        ids.append(status["id"])
    used = [r.voice for r in engine.requests if r.text.startswith("Words in the narrator")]
    assert {v.text for v in used} == {REFERENCE_TEXT}
    assert all(6.0 < len(v.audio) / 24000 < 7.0 for v in used), "trimmed as voices are"
    assert bucket.traffic.requests[("GET", f"/{BUCKET}/clips/narrator.flac")] == 1, (
        "one clip is fetched and prepared once per replica"
    )


@pytest.mark.parametrize(
    ("voice", "needle"),
    [
        (
            {"refAudio": f"s3://{BUCKET}/clips/missing.wav", "refText": "Hi."},
            f"could not read refAudio s3://{BUCKET}/clips/missing.wav: 404",
        ),
        ({"refAudio": f"s3://{BUCKET}/clips/notes.wav", "refText": "Hi."}, "not audio"),
        ({"refAudio": f"s3://{BUCKET}/clips/narrator.flac"}, "refText is required"),
        ({"refAudio": "s3://elsewhere/clip.wav", "refText": "Hi."}, "not allowed"),
        ({"refAudio": f"s3://{BUCKET}/clips/"}, "not a prefix"),
        ({"refAudio": f"s3://{BUCKET}/c.wav", "bogus": 1}, "voice.clip.bogus"),
        ({"refText": "Hi."}, "voice.clip.refAudio"),
    ],
)
def test_an_unusable_reference_clip_is_refused_with_the_reason(
    server: tuple[str, FakeEngine], bucket: S3Server, voice: dict[str, Any], needle: str
) -> None:
    url, _ = server
    body = {"text": "Hello.", "voice": voice, "output": {"uri": f"s3://{BUCKET}/refused/"}}
    resp = post_job(url, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()
    assert set(error) == {"error"}
    assert needle in error["error"]["message"], error
    assert keys(bucket, "refused/") == []
    assert httpx.get(f"{url}/readyz").status_code == 200
