"""TTSJobs on an endpoint backed by a real `tts-inference serve` (tiny model) and a real S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kopf
import pytest

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "0.3")

from tests.inference.test_server import tiny_model
from tests.operator.conftest import RunOperator
from tests.support.cluster import Kube
from tests.support.s3 import Fault, S3Server, free_port
from tests.support.server import HeldRequest, Server, start_server, stop
from tts_inference import audio
from tts_operator import config
from tts_operator import main as operator_main

__all__ = ["operator_main", "tiny_model"]
pytestmark = pytest.mark.slow

BUCKET = "tts-operator-jobs"
# The server asks for this key; the endpoint names the Secret holding it.
API_KEY = "endpoint-api-key-5678"


def start_endpoint_server(
    tiny_model: Path, s3: S3Server, tmp: Path, port: int | None = None, *extra: str
) -> Server:
    """The endpoint's server: the tiny model, its voices and job records in the bucket."""
    with contextlib.suppress(s3.client(direct=True).exceptions.BucketAlreadyOwnedByYou):
        s3.client(direct=True).create_bucket(Bucket=BUCKET)
    return start_server(
        tiny_model,
        tmp / f"serve-{port}-{len(list(tmp.glob('serve-*.log')))}.log",
        *extra,
        "--nfe-step",
        "2",
        "--cache-dir",
        str(tmp / "cache"),
        "--voices-uri",
        f"s3://{BUCKET}/voices/",
        "--allowed-buckets",
        BUCKET,
        env={**s3.env(), "TTS_API_KEY": API_KEY},
        port=port,
    )


@pytest.fixture(scope="module")
def server(
    tiny_model: Path, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    srv = start_endpoint_server(tiny_model, s3, tmp_path_factory.mktemp("endpoint"))
    yield srv
    stop(srv)


def _ready_endpoint(kube: Kube, ns: str, run_operator: RunOperator, url: str) -> Any:
    """A CPU TTSEndpoint made Ready by the cluster (kwok plays its pods); jobs go to ``url``."""
    settings = config.Settings(namespaces=(ns,), endpoint_url_template=url)
    runner = run_operator(memo=kopf.Memo(settings=settings))
    kube.create(
        "secrets",
        ns,
        {"metadata": {"name": "bucket"}, "stringData": {"AWS_REGION": "us-east-1"}},
    )
    kube.create("secrets", ns, {"metadata": {"name": "tts-key"}, "stringData": {"key": API_KEY}})
    kube.create(
        "ttsendpoints",
        ns,
        {
            "metadata": {"name": "tiny"},
            "spec": {
                "model": {"name": "tiny", "source": f"s3://{BUCKET}/models/tiny/v1/"},
                "storage": {"credentialsSecret": {"name": "bucket"}},
                "resources": {"gpus": 0},
                "apiKeySecret": {"name": "tts-key", "key": "key"},
            },
        },
    )
    kube.wait_for(
        lambda: ((kube.get("ttsendpoints", ns, "tiny") or {}).get("status") or {}).get("phase")
        == "Ready",
        timeout=60,
        message="the endpoint never became Ready",
    )
    return runner


def _ttsjob(name: str, **spec: Any) -> dict[str, Any]:
    base = {
        "endpointRef": {"name": "tiny"},
        "text": "Hello from a TTSJob.",
        "output": {"uri": f"s3://{BUCKET}/outputs/{name}.wav", "format": "wav"},
    }
    return {
        "apiVersion": "tts.f5tts.dev/v1alpha1",
        "kind": "TTSJob",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def _finished(kube: Kube, ns: str, name: str) -> Any:
    status = (kube.get("ttsjobs", ns, name) or {}).get("status") or {}
    return status if status.get("phase") in ("Succeeded", "Failed") else None


def _finished_on_a_new_server(
    kube: Kube,
    ns: str,
    name: str,
    tiny_model: Path,
    s3: S3Server,
    tmp: Path,
    port: int,
    timeout: float,
) -> Any:
    """The pod that replaces the endpoint's server comes up at the same address: the
    TTSJob's status once it has finished there."""
    new = start_endpoint_server(tiny_model, s3, tmp, port)
    try:
        return kube.wait_for(
            lambda: _finished(kube, ns, name), timeout=timeout, message=f"{name} never finished"
        )
    finally:
        stop(new)


def test_job_succeeds_and_its_audio_is_in_the_bucket(
    kube: Kube, ns: str, run_operator: RunOperator, server: Server, s3: S3Server
) -> None:
    _ready_endpoint(kube, ns, run_operator, server.url)
    kube.create("ttsjobs", ns, _ttsjob("hello"))
    status = kube.wait_for(
        lambda: _finished(kube, ns, "hello"), timeout=120, message="the job never finished"
    )
    assert status["phase"] == "Succeeded", status
    assert status["outputUri"] == f"s3://{BUCKET}/outputs/hello.wav"
    assert status["audioSeconds"] > 0.3
    data = s3.client(direct=True).get_object(Bucket=BUCKET, Key="outputs/hello.wav")["Body"].read()
    assert len(audio.decode(data)) / 24000 == pytest.approx(status["audioSeconds"], rel=0.05)
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Complete"] == "True"
    assert conds["Failed"] == "False"


def test_failing_job_reports_the_servers_reason(
    kube: Kube, ns: str, run_operator: RunOperator, server: Server
) -> None:
    _ready_endpoint(kube, ns, run_operator, server.url)
    kube.create("ttsjobs", ns, _ttsjob("nobody", voice={"name": "nobody"}, backoffLimit=0))
    status = kube.wait_for(
        lambda: _finished(kube, ns, "nobody"), timeout=120, message="the job never finished"
    )
    assert status["phase"] == "Failed"
    assert "nobody" in status["message"]


def test_operator_restart_while_the_job_runs_submits_it_once(
    kube: Kube, ns: str, run_operator: RunOperator, server: Server, s3: S3Server
) -> None:
    runner = _ready_endpoint(kube, ns, run_operator, server.url)
    text = " ".join(f"Sentence {i} keeps the endpoint busy for a little while." for i in range(12))
    kube.create("ttsjobs", ns, _ttsjob("long", text=text))

    def submitted() -> Any:
        status = (kube.get("ttsjobs", ns, "long") or {}).get("status") or {}
        return status.get("serverJobId")

    server_id = kube.wait_for(submitted, timeout=60, message="never submitted")
    runner.restart()
    status = kube.wait_for(
        lambda: _finished(kube, ns, "long"), timeout=300, message="the job never finished"
    )
    assert status["phase"] == "Succeeded", status
    assert status["serverJobId"] == server_id
    assert status["attempts"] == 1
    records = (
        s3.client(direct=True).list_objects_v2(Bucket=BUCKET, Prefix="jobs/").get("Contents", [])
    )
    assert len([r for r in records if r["Key"].endswith(f"{server_id}.json")]) == 1


def test_job_with_a_reference_clip_speaks_in_that_voice_on_the_endpoint(
    kube: Kube, ns: str, run_operator: RunOperator, server: Server, s3: S3Server
) -> None:
    clip = Path(audio.__file__).parent / "voices" / "default.wav"
    bucket = s3.client(direct=True)
    bucket.put_object(Bucket=BUCKET, Key="clips/narrator.wav", Body=clip.read_bytes())
    _ready_endpoint(kube, ns, run_operator, server.url)
    voice = {"refAudio": f"s3://{BUCKET}/clips/narrator.wav", "refText": "A narrator speaks."}
    kube.create("ttsjobs", ns, _ttsjob("clip", voice=voice))
    missing = {**voice, "refAudio": f"s3://{BUCKET}/clips/nobody.wav"}
    kube.create("ttsjobs", ns, _ttsjob("no-clip", voice=missing, backoffLimit=0))
    status = kube.wait_for(
        lambda: _finished(kube, ns, "clip"), timeout=120, message="never finished"
    )
    assert status["phase"] == "Succeeded", status
    data = bucket.get_object(Bucket=BUCKET, Key="outputs/clip.wav")["Body"].read()
    assert len(audio.decode(data)) / 24000 == pytest.approx(status["audioSeconds"], rel=0.05)
    refused = kube.wait_for(
        lambda: _finished(kube, ns, "no-clip"), timeout=120, message="never finished"
    )
    assert refused["phase"] == "Failed"
    assert "clips/nobody.wav" in refused["message"], refused["message"]


def test_a_job_waits_out_an_endpoint_it_cannot_reach_then_runs_once(
    kube: Kube, ns: str, run_operator: RunOperator, server: Server, s3: S3Server
) -> None:
    """Connection refused (a rollout replacing the pods) is not a failure: the same attempt waits."""
    closed = f"http://127.0.0.1:{free_port()}"
    runner = _ready_endpoint(kube, ns, run_operator, closed)
    kube.create("ttsjobs", ns, _ttsjob("patient"))

    def waiting() -> Any:
        status = (kube.get("ttsjobs", ns, "patient") or {}).get("status") or {}
        return status if "did not take the job yet" in status.get("message", "") else None

    status = kube.wait_for(waiting, timeout=60, message="never reported the unreachable endpoint")
    assert status.get("phase") != "Failed"
    assert int(status.get("attempts") or 0) == 0
    runner.stop()
    settings = config.Settings(namespaces=(ns,), endpoint_url_template=server.url)
    run_operator(memo=kopf.Memo(settings=settings))
    done = kube.wait_for(
        lambda: _finished(kube, ns, "patient"), timeout=120, message="the job never finished"
    )
    assert done["phase"] == "Succeeded", done
    assert done["attempts"] == 1


def test_a_job_on_an_endpoint_whose_key_secret_is_missing_waits_and_says_why(
    kube: Kube, ns: str, run_operator: RunOperator, server: Server
) -> None:
    _ready_endpoint(kube, ns, run_operator, server.url)
    kube.delete("secrets", ns, "tts-key")
    kube.create("ttsjobs", ns, _ttsjob("keyless"))

    def waiting() -> Any:
        status = (kube.get("ttsjobs", ns, "keyless") or {}).get("status") or {}
        return status if "API key" in status.get("message", "") else None

    status = kube.wait_for(waiting, message="never said the key is missing")
    assert f"Secret {ns}/tts-key" in status["message"]
    assert status["phase"] == "Pending"


def test_a_job_survives_a_rollout_of_its_endpoint(
    kube: Kube, ns: str, run_operator: RunOperator, tiny_model: Path, s3: S3Server, tmp_path: Path
) -> None:
    """The server pod is replaced mid-job (SIGTERM, then a new process at the same address):
    the TTSJob ends Succeeded, its audio in the bucket, as one attempt."""
    port = free_port()
    old = start_endpoint_server(tiny_model, s3, tmp_path, port)
    try:
        _ready_endpoint(kube, ns, run_operator, old.url)
        text = " ".join(f"Sentence {i} keeps the endpoint busy for a while." for i in range(12))
        kube.create("ttsjobs", ns, _ttsjob("rolled", text=text))
        kube.wait_for(
            lambda: ((kube.get("ttsjobs", ns, "rolled") or {}).get("status") or {}).get(
                "serverJobId"
            ),
            timeout=60,
            message="never submitted",
        )
    finally:
        stop(old)
    status = _finished_on_a_new_server(kube, ns, "rolled", tiny_model, s3, tmp_path, port, 300)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    data = s3.client(direct=True).get_object(Bucket=BUCKET, Key="outputs/rolled.wav")["Body"].read()
    assert len(audio.decode(data)) / 24000 == pytest.approx(status["audioSeconds"], rel=0.05)


def _transient(kube: Kube, ns: str, name: str) -> Any:
    status = (kube.get("ttsjobs", ns, name) or {}).get("status") or {}
    return status if status.get("transientErrors") else None


def test_a_job_sent_to_a_full_endpoint_waits_out_its_429_then_runs_once(
    kube: Kube, ns: str, run_operator: RunOperator, tiny_model: Path, s3: S3Server, tmp_path: Path
) -> None:
    """The server takes one job at a time (--max-pending-jobs 1) and holds one: its text is
    still on its way from the bucket. The TTSJob is answered 429 with Retry-After, waits
    in Pending saying so, and runs, once, when the first job is done."""
    srv = start_endpoint_server(tiny_model, s3, tmp_path, None, "--max-pending-jobs", "1")
    direct = s3.client(direct=True)
    direct.put_object(Bucket=BUCKET, Key="texts/first.txt", Body=b"The first job holds the slot.")
    release = threading.Event()
    held = s3.proxy.add_fault(Fault(method="GET", key_contains="texts/first.txt", hold=release))
    try:
        first = httpx.post(
            f"{srv.url}/v1/jobs",
            json={
                "textUri": f"s3://{BUCKET}/texts/first.txt",
                "output": {"uri": f"s3://{BUCKET}/outputs/first.wav"},
            },
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        assert first.status_code == 202, first.text
        _ready_endpoint(kube, ns, run_operator, srv.url)
        kube.create("ttsjobs", ns, _ttsjob("behind"))
        waiting = kube.wait_for(
            lambda: _transient(kube, ns, "behind"), timeout=60, message="never answered 429"
        )
        assert held.hits == 1, "the first job's text was not being read"
    finally:
        release.set()
        s3.proxy.clear_faults()
    try:
        assert waiting["phase"] == "Pending"
        assert "(429: 1 jobs are queued or running; the limit is 1" in waiting["message"]
        assert "trying again in 5s" in waiting["message"], "the server's Retry-After"
        assert not waiting.get("attempts")
        status = kube.wait_for(
            lambda: _finished(kube, ns, "behind"), timeout=120, message="never finished"
        )
        assert status["phase"] == "Succeeded", status
        assert status["attempts"] == 1
        assert status["transientErrors"] >= 1
        jobs = httpx.get(
            f"{srv.url}/v1/jobs/{first.json()['id']}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        ).json()
        assert jobs["state"] == "succeeded"
    finally:
        stop(srv)
    assert direct.head_object(Bucket=BUCKET, Key="outputs/behind.wav")["ContentLength"] > 44


def test_a_job_sent_to_a_draining_endpoint_waits_out_its_503_then_runs_on_the_new_pod(
    kube: Kube, ns: str, run_operator: RunOperator, tiny_model: Path, s3: S3Server, tmp_path: Path
) -> None:
    """The endpoint's pod got SIGTERM and drains a request still uploading: the TTSJob is
    answered 503 with Retry-After, waits, and runs on the pod that replaces it, once."""
    port = free_port()
    old = start_endpoint_server(tiny_model, s3, tmp_path, port, "--drain-grace", "300")
    try:
        _ready_endpoint(kube, ns, run_operator, old.url)
        body = {"model": "tiny", "input": "Still uploading.", "voice": "default"}
        held = HeldRequest(old, "/v1/audio/speech", json.dumps(body).encode(), API_KEY)
        old.proc.send_signal(signal.SIGTERM)
        kube.wait_for(
            lambda: httpx.get(f"{old.url}/readyz", timeout=10).status_code == 503,
            message="the signal never started a drain",
        )
        kube.create("ttsjobs", ns, _ttsjob("drained"))
        waiting = kube.wait_for(
            lambda: _transient(kube, ns, "drained"), timeout=60, message="never answered 503"
        )
        assert old.proc.poll() is None, "the pod left before its request in flight ended"
        status_code, _ = held.finish()
        assert status_code == 200
        assert old.proc.wait(timeout=60) == 0
    finally:
        stop(old)
    assert waiting["phase"] == "Pending"
    assert "(503: draining: the server is shutting down)" in waiting["message"], waiting
    assert "trying again in 5s" in waiting["message"], "the server's Retry-After"
    status = _finished_on_a_new_server(kube, ns, "drained", tiny_model, s3, tmp_path, port, 120)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    assert status["transientErrors"] >= 1


def test_a_job_whose_endpoint_never_comes_fails_at_its_deadline(
    kube: Kube, ns: str, run_operator: RunOperator
) -> None:
    """No TTSEndpoint by that name ever appears: two seconds after its creation the TTSJob
    is Failed with reason DeadlineExceeded, instead of waiting for ever."""
    settings = config.Settings(namespaces=(ns,), endpoint_url_template="http://127.0.0.1:9")
    run_operator(memo=kopf.Memo(settings=settings))
    kube.create("ttsjobs", ns, _ttsjob("too-late", activeDeadlineSeconds=2))
    status = kube.wait_for(
        lambda: _finished(kube, ns, "too-late"), timeout=60, message="never finished"
    )
    assert status["phase"] == "Failed"
    assert "not finished 2s after it was created" in status["message"]
    failed = {cond["type"]: cond for cond in status["conditions"]}["Failed"]
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")
