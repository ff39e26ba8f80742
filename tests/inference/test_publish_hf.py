"""`tts-inference publish hf://...`: mirror a Hugging Face model folder into the bucket once.

The hub is tests/support/fake_hub.py on 127.0.0.1 (HF_ENDPOINT points the
unmodified huggingface_hub at it); the bucket is moto behind the counting
proxy. The console script runs in a subprocess, as in a pod.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.fake_hub import FakeHub, fake_hub
from tests.support.s3 import SECRET_KEY, S3Server, free_port
from tts_inference.cache.hf import HfUri
from tts_inference.cache.store import CacheError

BUCKET = "tts-hf-models"
MIB = 1024 * 1024
REPO = "test-org/test-model"
VOCODER = "charactr/vocos-mel-24khz"
PRIVATE = "private-org/private-model"
TOKEN = "hf_fakeTokenThatMustNeverBePrinted0123456789"
MODEL = "F5TTS_v1_Base"


@dataclass
class Hub:
    server: FakeHub
    main: dict[str, bytes]  # the repo's files at main
    v1: dict[str, bytes]  # the repo's files at tag v1.0
    vocoder: dict[str, bytes]
    main_sha: str
    v1_sha: str

    def under(self, files: dict[str, bytes], folder: str) -> dict[str, bytes]:
        return {p[len(folder) + 1 :]: d for p, d in files.items() if p.startswith(folder + "/")}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    v1 = {
        f"{MODEL}/model_1250000.safetensors": os.urandom(2 * MIB + 17),
        f"{MODEL}/vocab.txt": b"a\nb\nc\n",
        "README.md": b"# test model, first commit\n",
    }
    main = {
        f"{MODEL}/model_1250000.safetensors": os.urandom(4 * MIB + 123),
        f"{MODEL}/vocab.txt": "\n".join(["a", "b", "c", "ü", " "] * 500).encode(),
        # Outside the path: never mirrored.
        "F5TTS_Base/model_1200000.safetensors": os.urandom(MIB),
        "F5TTS_Base/vocab.txt": b"x\n",
        "README.md": b"# test model\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    vocoder = {
        "config.yaml": b"feature_extractor:\n  class_path: vocos.feature_extractors.MelSpectrogramFeatures\n",
        "pytorch_model.bin": os.urandom(MIB + 5),
        "README.md": b"# vocos\n",
    }
    with fake_hub() as server:
        v1_sha = server.add_commit(REPO, v1, refs=("v1.0",))
        main_sha = server.add_commit(REPO, main, refs=("main",))
        server.add_commit(VOCODER, vocoder)
        server.add_commit(PRIVATE, main, token=TOKEN)
        yield Hub(server, main, v1, vocoder, main_sha, v1_sha)


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    client = s3.client(direct=True)
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def hub_env(s3: S3Server, hub: Hub, tmp_path: Path) -> dict[str, str]:
    """The pod's environment: AWS_* for the bucket, HF_* for the (fake) hub, a private TMPDIR."""
    env = {
        k: v
        for k, v in s3.env().items()
        if k
        not in {
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE",
            "HF_HUB_CACHE",
        }
    }
    (tmp_path / "tmp").mkdir()
    env.update(
        HF_ENDPOINT=hub.server.endpoint,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TMPDIR=str(tmp_path / "tmp"),
    )
    hub.server.traffic.reset()
    return env


def _publish(
    tts_inference: list[str], env: dict[str, str], src: str, dest: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tts_inference, "publish", src, dest, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _manifest(s3: S3Server, dest: str) -> dict[str, dict[str, object]]:
    key = dest.split(f"{BUCKET}/", 1)[1] + "/manifest.json"
    body = s3.client(direct=True).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return {str(f["path"]): f for f in json.loads(body)["files"]}


def _keys(s3: S3Server, dest: str) -> list[str]:
    prefix = dest.split(f"{BUCKET}/", 1)[1] + "/"
    listing = s3.client(direct=True).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _assert_manifest(s3: S3Server, dest: str, files: dict[str, bytes]) -> None:
    manifest = _manifest(s3, dest)
    assert sorted(manifest) == sorted(files)
    for rel, data in files.items():
        assert manifest[rel]["size"] == len(data), rel
        assert manifest[rel]["sha256"] == hashlib.sha256(data).hexdigest(), rel


def _assert_clean(proc: subprocess.CompletedProcess[str], env: dict[str, str]) -> None:
    """No secret in the output, and the staging folder is gone."""
    for secret in (TOKEN, SECRET_KEY):
        assert secret not in proc.stdout + proc.stderr
    assert list(Path(env["TMPDIR"]).iterdir()) == []


def test_mirrors_the_path_once_then_syncs_identical_files(
    tts_inference: list[str],
    s3: S3Server,
    bucket: str,
    hub: Hub,
    hub_env: dict[str, str],
    tmp_path: Path,
) -> None:
    dest = f"s3://{bucket}/models/{MODEL}/v1"
    proc = _publish(tts_inference, hub_env, f"hf://{REPO}/{MODEL}", dest)
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc, hub_env)
    expected = hub.under(hub.main, MODEL)
    _assert_manifest(s3, dest, expected)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["source"] == f"hf://{REPO}/{MODEL}@{hub.main_sha}"
    assert summary["files"] == 2

    # Each file under the path left the hub exactly once; nothing else did.
    downloads = hub.server.traffic.downloads
    assert downloads == {f"{REPO}/{MODEL}/{rel}": 1 for rel in expected}
    assert hub.server.traffic.body_bytes[f"{REPO}/{MODEL}/model_1250000.safetensors"] == len(
        expected["model_1250000.safetensors"]
    )

    # The sync side only reads the bucket, and gets the hub's bytes.
    cache = tmp_path / "cache"
    sync = subprocess.run(
        [*tts_inference, "sync", "--source", dest, "--cache-dir", str(cache)],
        env=hub_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0, sync.stderr
    (folder,) = [p for p in (cache / "models" / MODEL).iterdir() if not p.name.startswith(".")]
    assert (folder / ".complete").exists()
    got = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in {".complete", "manifest.json"}
    }
    assert got == expected


def test_vocoder_lands_in_vocos(
    tts_inference: list[str], s3: S3Server, bucket: str, hub: Hub, hub_env: dict[str, str]
) -> None:
    dest = f"s3://{bucket}/models/{MODEL}/with-vocoder"
    proc = _publish(
        tts_inference, hub_env, f"hf://{REPO}/{MODEL}", dest, "--vocoder", f"hf://{VOCODER}"
    )
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc, hub_env)
    expected = hub.under(hub.main, MODEL)
    expected |= {f"vocos/{n}": hub.vocoder[n] for n in ("config.yaml", "pytorch_model.bin")}
    _assert_manifest(s3, dest, expected)
    assert hub.server.traffic.downloads[f"{VOCODER}/README.md"] == 0
    assert hub.server.traffic.downloads[f"{VOCODER}/pytorch_model.bin"] == 1


def test_revision_after_the_path(
    tts_inference: list[str], s3: S3Server, bucket: str, hub: Hub, hub_env: dict[str, str]
) -> None:
    dest = f"s3://{bucket}/models/{MODEL}/tag-v1"
    proc = _publish(tts_inference, hub_env, f"hf://{REPO}/{MODEL}@v1.0", dest)
    assert proc.returncode == 0, proc.stderr
    _assert_manifest(s3, dest, hub.under(hub.v1, MODEL))
    assert json.loads(proc.stdout.strip().splitlines()[-1])["source"] == (
        f"hf://{REPO}/{MODEL}@{hub.v1_sha}"
    )


def test_same_revision_again_is_refused_before_any_download(
    tts_inference: list[str], s3: S3Server, bucket: str, hub: Hub, hub_env: dict[str, str]
) -> None:
    dest = f"s3://{bucket}/models/{MODEL}/immutable"
    first = _publish(tts_inference, hub_env, f"hf://{REPO}/{MODEL}", dest)
    assert first.returncode == 0, first.stderr
    before = _manifest(s3, dest)
    hub.server.traffic.reset()
    again = _publish(tts_inference, hub_env, f"hf://{REPO}/{MODEL}@v1.0", dest)
    assert again.returncode != 0
    assert "immutable" in again.stderr
    assert hub.server.traffic.total_requests == 0, "the hub was asked before the guard"
    assert _manifest(s3, dest) == before
    _assert_clean(again, hub_env)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (f"hf://test-org/no-such-model/{MODEL}", "repository test-org/no-such-model not found"),
        (f"hf://{REPO}/NoSuchFolder", "no files under 'NoSuchFolder'"),
        (f"hf://{REPO}/{MODEL}@v9", "revision 'v9' not found"),
        (f"hf://{PRIVATE}/{MODEL}", "set HF_TOKEN"),
    ],
    ids=["unknown-repo", "empty-path", "unknown-revision", "private-without-token"],
)
def test_hub_errors_name_the_uri(
    tts_inference: list[str],
    s3: S3Server,
    bucket: str,
    hub_env: dict[str, str],
    source: str,
    message: str,
) -> None:
    dest = f"s3://{bucket}/models/broken/{hashlib.sha1(source.encode()).hexdigest()[:12]}"
    proc = _publish(tts_inference, hub_env, source, dest)
    assert proc.returncode != 0
    assert f"error: publish failed: {source}:" in proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _keys(s3, dest) == []
    _assert_clean(proc, hub_env)


def test_hf_token_is_used_and_never_printed(
    tts_inference: list[str], s3: S3Server, bucket: str, hub: Hub, hub_env: dict[str, str]
) -> None:
    wrong = hub_env | {"HF_TOKEN": "hf_wrongTokenAlsoNeverPrinted987654321"}
    dest = f"s3://{bucket}/models/{MODEL}/private"
    denied = _publish(tts_inference, wrong, f"hf://{PRIVATE}/{MODEL}", dest)
    assert denied.returncode != 0
    assert "rejected the token in HF_TOKEN" in denied.stderr
    assert wrong["HF_TOKEN"] not in denied.stdout + denied.stderr
    assert _keys(s3, dest) == []

    proc = _publish(tts_inference, hub_env | {"HF_TOKEN": TOKEN}, f"hf://{PRIVATE}/{MODEL}", dest)
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc, hub_env)
    _assert_manifest(s3, dest, hub.under(hub.main, MODEL))
    # The hub redirects LFS files to its CDN host: the token must not follow.
    assert hub.server.traffic.downloads[f"{PRIVATE}/{MODEL}/model_1250000.safetensors"] == 1
    assert hub.server.traffic.cdn_authorized == 0


def test_unreachable_hub(
    tts_inference: list[str], s3: S3Server, bucket: str, hub_env: dict[str, str]
) -> None:
    env = hub_env | {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_TOKEN": TOKEN}
    dest = f"s3://{bucket}/models/{MODEL}/unreachable"
    proc = _publish(tts_inference, env, f"hf://{REPO}/{MODEL}", dest)
    assert proc.returncode != 0
    assert f"hf://{REPO}/{MODEL}: cannot reach the hub at {env['HF_ENDPOINT']}" in proc.stderr
    assert _keys(s3, dest) == []
    _assert_clean(proc, env)


def test_vocoder_needs_an_hf_source(
    tts_inference: list[str], bucket: str, hub_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "vocab.txt").write_text("a\n")
    proc = _publish(
        tts_inference,
        hub_env,
        str(tmp_path / "model"),
        f"s3://{bucket}/models/local/v1",
        "--vocoder",
        f"hf://{VOCODER}",
    )
    assert proc.returncode != 0
    assert "--vocoder needs an hf:// source" in proc.stderr


@pytest.mark.parametrize(
    ("uri", "repo_id", "path", "revision"),
    [
        ("hf://SWivid/F5-TTS/F5TTS_v1_Base", "SWivid/F5-TTS", "F5TTS_v1_Base", None),
        ("hf://SWivid/F5-TTS/F5TTS_v1_Base/", "SWivid/F5-TTS", "F5TTS_v1_Base", None),
        ("hf://SWivid/F5-TTS/F5TTS_v1_Base@v1.0", "SWivid/F5-TTS", "F5TTS_v1_Base", "v1.0"),
        ("hf://SWivid/F5-TTS@v1.0/F5TTS_v1_Base", "SWivid/F5-TTS", "F5TTS_v1_Base", "v1.0"),
        ("hf://org/repo/a/b@refs/pr/1", "org/repo", "a/b", "refs/pr/1"),
        ("hf://charactr/vocos-mel-24khz", "charactr/vocos-mel-24khz", "", None),
        ("hf://charactr/vocos-mel-24khz@main", "charactr/vocos-mel-24khz", "", "main"),
    ],
)
def test_hf_uri_forms(uri: str, repo_id: str, path: str, revision: str | None) -> None:
    parsed = HfUri.parse(uri)
    assert (parsed.repo_id, parsed.path, parsed.revision) == (repo_id, path, revision)
    assert HfUri.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "uri",
    [
        "hf://",
        "hf://only-org",
        "hf:///repo",
        "hf://org/repo/path@",
        "hf://datasets/org/data",
        "hf://org/repo/../secrets",
        "s3://bucket/key",
    ],
)
def test_bad_hf_uris(uri: str) -> None:
    with pytest.raises(CacheError, match="hf://"):
        HfUri.parse(uri)
