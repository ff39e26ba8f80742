"""sync and publish against a real S3 server (moto on 127.0.0.1, real HTTP, unmodified boto3)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.s3 import SECRET_KEY, Fault, S3Server
from tts_inference.storage.bucket import PERMANENT_EXIT

BUCKET = "tts-models"
MIB = 1024 * 1024


@dataclass
class Model:
    name: str
    source: str
    folder: Path
    files: dict[str, bytes]

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())

    def key(self, rel: str) -> str:
        return f"/{BUCKET}/{self.source.split(BUCKET + '/', 1)[1]}{rel}"


def _write_model(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _publish(
    tts_inference: list[str], s3: S3Server, folder: Path, dest: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tts_inference, "publish", str(folder), dest, *extra],
        env=s3.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    client = s3.client(direct=True)
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    return BUCKET


def _make(
    tmp: Path, s3: S3Server, name: str, sizes: dict[str, int], text: dict[str, bytes] | None = None
) -> Model:
    files = {rel: os.urandom(size) for rel, size in sizes.items()} | (text or {})
    folder = tmp / name
    _write_model(folder, files)
    model = Model(name, f"s3://{BUCKET}/models/{name}/v1/", folder, files)
    proc = _publish(
        [str(Path(sys.executable).parent / "tts-inference")], s3, folder, model.source.rstrip("/")
    )
    assert proc.returncode == 0, proc.stderr
    return model


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory, s3: S3Server, bucket: str) -> Model:
    """A model of 105 MiB: a large checkpoint, a vocoder, small text files, its model.yaml."""
    sizes = {
        "model_1250000.safetensors": 96 * MIB,
        "vocos/pytorch_model.bin": 9 * MIB,
        "vocab.txt": 2545,
        "vocos/config.yaml": 412,
    }
    # Publish writes no model.yaml for a folder that has one (and refuses an f5-tts
    # checkpoint whose model it cannot tell); the sync tests only move bytes.
    text = {"model.yaml": b"name: big\n"}
    return _make(tmp_path_factory.mktemp("big"), s3, "big", sizes, text)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory, s3: S3Server, bucket: str) -> Model:
    sizes = {"model.safetensors": 12 * MIB + 123, "vocab.txt": 1000, "empty.txt": 0}
    return _make(tmp_path_factory.mktemp("small"), s3, "small", sizes)


def _sync_cmd(tts_inference: list[str], source: str, cache: Path, *extra: str) -> list[str]:
    return [
        *tts_inference,
        "sync",
        "--source",
        source,
        "--cache-dir",
        str(cache),
        "--progress-interval",
        "0.2",
        *extra,
    ]


def _sync(
    tts_inference: list[str], s3: S3Server, source: str, cache: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _sync_cmd(tts_inference, source, cache, *extra),
        env=s3.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    last = proc.stdout.strip().splitlines()[-1]
    doc: dict[str, object] = json.loads(last)
    return doc


def _model_dir(cache: Path, model: Model) -> Path:
    (digest_dir,) = [
        p for p in (cache / "models" / model.name).iterdir() if not p.name.startswith(".")
    ]
    return digest_dir


def _assert_cache_matches(cache: Path, model: Model) -> Path:
    folder = _model_dir(cache, model)
    assert (folder / ".complete").exists()
    for rel, data in model.files.items():
        assert (
            hashlib.sha256((folder / rel).read_bytes()).hexdigest()
            == hashlib.sha256(data).hexdigest()
        ), rel
    leftovers = [p.name for p in folder.rglob("*") if p.name.endswith((".part", ".progress"))]
    assert leftovers == []
    return folder


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cache"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_eight_concurrent_syncs_download_every_byte_once(
    tts_inference: list[str], clean_s3: S3Server, big_model: Model, cache: Path
) -> None:
    procs = [
        subprocess.Popen(
            _sync_cmd(tts_inference, big_model.source, cache),
            env=clean_s3.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    for proc, _, err in results:
        assert proc.returncode == 0, err
    # Each object's bytes left the server exactly once.
    for rel, data in big_model.files.items():
        assert clean_s3.traffic.body_bytes[big_model.key(rel)] == len(data), rel
    _assert_cache_matches(cache, big_model)
    summaries = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in results]
    downloaded = sorted(int(s["bytesDownloaded"]) for s in summaries)
    assert downloaded == [0] * 7 + [big_model.size]
    assert any("waiting: another process is syncing" in err for _, _, err in results)


def test_warm_sync_reads_nothing_from_the_bucket(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path
) -> None:
    first = _sync(tts_inference, clean_s3, small_model.source, cache)
    assert first.returncode == 0, first.stderr
    clean_s3.traffic.reset()
    again = _sync(tts_inference, clean_s3, small_model.source, cache)
    assert again.returncode == 0, again.stderr
    summary = _summary(again)
    assert summary["bytesDownloaded"] == 0
    assert summary["warm"] is True
    assert summary["filesReused"] == len(small_model.files)
    assert float(str(summary["seconds"])) < 1.0
    assert sum(clean_s3.traffic.requests.values()) == 0, "a warm sync must not touch the bucket"


def test_full_verify_refetches_a_file_damaged_on_disk(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path
) -> None:
    assert _sync(tts_inference, clean_s3, small_model.source, cache).returncode == 0
    folder = _model_dir(cache, small_model)
    damaged = folder / "model.safetensors"
    with open(damaged, "r+b") as fh:
        fh.write(b"\0" * 16)
    # A size check cannot see it; a full verify does, and repairs just that file.
    clean_s3.traffic.reset()
    proc = _sync(tts_inference, clean_s3, small_model.source, cache, "--verify", "full")
    assert proc.returncode == 0, proc.stderr
    summary = _summary(proc)
    assert summary["filesDownloaded"] == 1
    assert clean_s3.traffic.body_bytes[small_model.key("model.safetensors")] == len(
        small_model.files["model.safetensors"]
    )
    _assert_cache_matches(cache, small_model)


@pytest.mark.slow
def test_killed_sync_resumes_and_fetches_at_most_ten_percent_extra(
    tts_inference: list[str], clean_s3: S3Server, big_model: Model, cache: Path
) -> None:
    clean_s3.proxy.rate = 40 * MIB  # per response, so the kill lands mid-file
    half = clean_s3.traffic.when_bytes_reach(big_model.size // 2)
    proc = subprocess.Popen(
        _sync_cmd(tts_inference, big_model.source, cache, "--workers", "4"),
        env=clean_s3.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert half.wait(timeout=120), "the sync never got half way"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    first = clean_s3.traffic.bytes_for()
    assert first < big_model.size, "killed too late to test resuming"
    assert not (_model_dir(cache, big_model) / ".complete").exists()

    clean_s3.proxy.rate = None
    again = _sync(tts_inference, clean_s3, big_model.source, cache)
    assert again.returncode == 0, again.stderr
    assert "resuming:" in again.stderr
    _assert_cache_matches(cache, big_model)
    total = clean_s3.traffic.bytes_for(lambda k: not k.endswith("manifest.json"))
    assert total <= 1.1 * big_model.size, f"fetched {total} bytes for a {big_model.size}-byte model"


def test_corrupted_object_fails_and_is_never_accepted(
    tts_inference: list[str], clean_s3: S3Server, tmp_path: Path, bucket: str, cache: Path
) -> None:
    model = _make(tmp_path, clean_s3, "corrupt", {"model.safetensors": 3 * MIB, "vocab.txt": 100})
    # The object in the bucket no longer matches its manifest (same size, other bytes).
    clean_s3.client(direct=True).put_object(
        Bucket=BUCKET, Key="models/corrupt/v1/model.safetensors", Body=os.urandom(3 * MIB)
    )
    for _ in range(2):
        proc = _sync(tts_inference, clean_s3, model.source, cache)
        assert proc.returncode == 1
        assert "sha256 mismatch" in proc.stderr
        assert "s3://tts-models/models/corrupt/v1/model.safetensors" in proc.stderr
        folder = _model_dir(cache, model)
        assert not (folder / ".complete").exists()
        assert not (folder / "model.safetensors").exists()
        assert not list(folder.glob("*.part"))


def test_sync_survives_server_errors_dropped_connections_and_slow_responses(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path
) -> None:
    faults = [
        clean_s3.proxy.add_fault(Fault(key_contains="manifest.json", status=500, times=2)),
        clean_s3.proxy.add_fault(
            Fault(
                key_contains="model.safetensors",
                status=503,
                code="SlowDown",
                times=2,
                ranged_only=True,
            )
        ),
        clean_s3.proxy.add_fault(
            Fault(key_contains="model.safetensors", drop_after=300_000, times=3, ranged_only=True)
        ),
        clean_s3.proxy.add_fault(Fault(key_contains="vocab.txt", delay=1.5, times=1)),
    ]
    proc = _sync(tts_inference, clean_s3, small_model.source, cache, "--chunk-mib", "4")
    assert proc.returncode == 0, proc.stderr
    _assert_cache_matches(cache, small_model)
    assert all(f.hits > 0 for f in faults), [(f, f.hits) for f in faults]
    assert "retry" in proc.stderr


@pytest.mark.parametrize("target", ["manifest.json", "model.safetensors"])
def test_403_fails_at_once_naming_bucket_and_key_without_the_secret(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path, target: str
) -> None:
    clean_s3.proxy.add_fault(Fault(key_contains=target, status=403, code="AccessDenied", times=-1))
    proc = _sync(tts_inference, clean_s3, small_model.source, cache)
    assert proc.returncode == PERMANENT_EXIT, "no retry can fix a 403: the cache Job fails at once"
    assert f"403 AccessDenied on s3://tts-models/models/small/v1/{target}" in proc.stderr
    assert "access denied" in proc.stderr
    assert SECRET_KEY not in proc.stdout + proc.stderr
    assert clean_s3.traffic.requests[("GET", small_model.key(target))] <= 4, (
        "403 must not be retried"
    )
    assert not any((cache / "models").rglob(".complete"))


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (
            "s3://tts-models/models/small/v999/",
            "404 NoSuchKey on s3://tts-models/models/small/v999/manifest.json",
        ),
        (
            "s3://no-such-bucket-here/models/small/v1/",
            "on s3://no-such-bucket-here/models/small/v1/manifest.json",
        ),
        ("https://example.com/models/x/", "not an s3:// URI"),
    ],
)
def test_missing_source_fails_clearly(
    tts_inference: list[str],
    clean_s3: S3Server,
    small_model: Model,
    cache: Path,
    source: str,
    needle: str,
) -> None:
    proc = _sync(tts_inference, clean_s3, source, cache)
    assert proc.returncode == PERMANENT_EXIT
    assert needle in proc.stderr
    assert SECRET_KEY not in proc.stdout + proc.stderr


def test_not_enough_free_space_fails_before_downloading(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path
) -> None:
    free_mib = shutil.disk_usage(cache).free // MIB
    proc = _sync(tts_inference, clean_s3, small_model.source, cache, "--reserve-mib", str(free_mib))
    assert proc.returncode == 1
    assert "not enough free space" in proc.stderr
    assert "spec.storage.cache.size" in proc.stderr
    assert clean_s3.traffic.bytes_for(lambda k: not k.endswith("manifest.json")) == 0


def test_progress_lines_and_summary_fit_kubectl_logs(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path, tmp_path: Path
) -> None:
    termination = tmp_path / "termination-log"
    proc = _sync(
        tts_inference, clean_s3, small_model.source, cache, "--termination-log", str(termination)
    )
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("sync small:")]
    assert progress
    assert "MiB" in progress[-1]
    assert "ETA" in progress[-1]
    assert "(100%)" in progress[-1]
    summary = _summary(proc)
    assert summary["event"] == "sync-complete"
    assert summary["bytesDownloaded"] == small_model.size
    assert summary["filesDownloaded"] == len(small_model.files)
    assert json.loads(termination.read_text()) == summary


def test_clients_send_no_default_checksums_that_b2_rejects(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path, tmp_path: Path
) -> None:
    model = _make(tmp_path, clean_s3, "checksums", {"a.bin": 70 * 1024, "b.bin": 10})
    assert _sync(tts_inference, clean_s3, model.source, cache).returncode == 0
    seen = set(clean_s3.traffic.header_names)
    assert "x-amz-sdk-checksum-algorithm" not in seen
    assert not {h for h in seen if h.startswith("x-amz-checksum")}


def test_publish_writes_manifest_last_and_refuses_to_overwrite_a_revision(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, bucket: str
) -> None:
    client = clean_s3.client(direct=True)
    manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key="models/small/v1/manifest.json")["Body"].read()
    )
    assert sorted(f["path"] for f in manifest["files"]) == sorted(small_model.files)
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256(small_model.files[entry["path"]]).hexdigest()
        assert entry["size"] == len(small_model.files[entry["path"]])

    clean_s3.traffic.reset()
    again = _publish(tts_inference, clean_s3, small_model.folder, small_model.source)
    assert again.returncode == 1
    assert "revisions are immutable" in again.stderr
    assert not [k for (m, k) in clean_s3.traffic.requests if m in {"PUT", "POST"}]

    forced = _publish(tts_inference, clean_s3, small_model.folder, small_model.source, "--force")
    assert forced.returncode == 0, forced.stderr
    doc = json.loads(forced.stdout.strip().splitlines()[-1])
    assert doc["filesSkipped"] == len(small_model.files), "unchanged files are not sent again"
    puts = [k for (m, k) in clean_s3.traffic.requests if m == "PUT"]
    assert puts == [small_model.key("manifest.json")]


def test_publish_uses_multipart_for_large_files(
    tts_inference: list[str], clean_s3: S3Server, tmp_path: Path, bucket: str
) -> None:
    folder = tmp_path / "mp"
    _write_model(folder, {"big.bin": os.urandom(12 * MIB)})
    proc = _publish(
        tts_inference, clean_s3, folder, f"s3://{BUCKET}/models/mp/v1", "--multipart-mib", "5"
    )
    assert proc.returncode == 0, proc.stderr
    assert any(m == "POST" and k.endswith("big.bin") for (m, k) in clean_s3.traffic.requests), (
        "no multipart upload"
    )
    head = clean_s3.client(direct=True).head_object(Bucket=BUCKET, Key="models/mp/v1/big.bin")
    assert head["ContentLength"] == 12 * MIB


def test_link_points_at_the_synced_folder(
    tts_inference: list[str], clean_s3: S3Server, small_model: Model, cache: Path, tmp_path: Path
) -> None:
    link = tmp_path / "run" / "model"
    for _ in range(2):  # a second sync (a restarted pod) replaces the link in place
        proc = _sync(tts_inference, clean_s3, small_model.source, cache, "--link", str(link))
        assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert link.resolve() == _model_dir(cache, small_model).resolve()
    assert (link / "vocab.txt").read_bytes() == small_model.files["vocab.txt"]
