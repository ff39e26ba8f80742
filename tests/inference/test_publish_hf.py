"""`tts-inference publish hf://...`: mirror a Hugging Face model folder into the bucket once.

The hub is tests/support/fake_hub.py on 127.0.0.1 (HF_ENDPOINT points the
unmodified huggingface_hub at it); the bucket is moto behind the counting
proxy. The console script runs in a subprocess, as in a pod.

test-org/test-model is a repo laid out for this project (its folder carries a
model.yaml, so it is mirrored as it is). SWivid/F5-TTS, SWivid/E2-TTS and
charactr/vocos-mel-24khz are laid out as the real hub lays them out (no
model.yaml; the file names f5-tts downloads), holding tiny random weights in
the real checkpoint's key layout: publish writes their model.yaml, and the
result syncs and serves.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import require_tool
from tests.support.fake_hub import (
    F5_HUB,
    VOCOS_REPO,
    FakeHub,
    f5_hub_files,
    fake_hub,
    hub_environment,
    vocos_hub_files,
)
from tests.support.s3 import SECRET_KEY, S3Server, free_port
from tests.support.server import start_server, stop
from tts_inference import model_folder
from tts_inference.cache.hf import HfUri
from tts_inference.storage.bucket import StorageError

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
        f"{MODEL}/model.yaml": b"name: first\n",
        f"{MODEL}/model_1250000.safetensors": os.urandom(2 * MIB + 17),
        f"{MODEL}/vocab.txt": b"a\nb\nc\n",
        "README.md": b"# test model, first commit\n",
    }
    main = {
        f"{MODEL}/model.yaml": b"name: F5TTS_v1_Base\n",
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
    (tmp_path / "tmp").mkdir()
    env = hub_environment(s3.env(), hub.server, tmp_path / "hf-home", tmp_path / "tmp")
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
    assert summary["files"] == 3
    assert "modelConfig" not in summary  # the folder's own model.yaml, as it is

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
    with pytest.raises(StorageError, match="hf://"):
        HfUri.parse(uri)


# --- the hub's own layout: SWivid/F5-TTS/F5TTS_v1_Base and the rest ----------------------------

#: The tiny arch standing in for each model (E2TTS_Base is a UNetT, the others DiTs).
TINY_BACKBONE = {"F5TTS_v1_Base": "DiT", "F5TTS_Base": "DiT", "E2TTS_Base": "UNetT"}


@dataclass
class F5Hub:
    repos: dict[str, dict[str, bytes]]  # repo -> path -> data, as on the hub
    vocos: dict[str, bytes]
    tiny: dict[str, Path]  # backbone -> the tiny model folder the weights come from

    def folder(self, name: str) -> dict[str, bytes]:
        repo = F5_HUB[name][0]
        return {
            p[len(name) + 1 :]: d for p, d in self.repos[repo].items() if p.startswith(name + "/")
        }


@pytest.fixture(scope="module")
def f5_hub(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> F5Hub:
    """SWivid/F5-TTS, SWivid/E2-TTS and charactr/vocos-mel-24khz on the fake hub, tiny weights."""
    from tts_inference.tiny_model import TINY_ARCH, TINY_UNET_ARCH, make_model

    root = tmp_path_factory.mktemp("tiny-hub")
    tiny = {
        "DiT": make_model(root / "dit", arch=TINY_ARCH),
        "UNetT": make_model(root / "unett", arch=TINY_UNET_ARCH, backbone="UNetT", seed=1),
    }
    repos: dict[str, dict[str, bytes]] = {}
    for name, backbone in TINY_BACKBONE.items():
        repo, files = f5_hub_files(name, tiny[backbone])
        repos.setdefault(repo, {}).update(files)
    for repo, files in repos.items():
        hub.server.add_commit(repo, files)
    vocos = vocos_hub_files(tiny["DiT"])
    hub.server.add_commit(VOCOS_REPO, vocos)
    return F5Hub(repos, vocos, tiny)


def _tiny_config(tmp_path: Path, name: str) -> Path:
    """The tiny arch in f5-tts's config format, for --model-config."""
    from tts_inference.tiny_model import TINY_ARCH, TINY_UNET_ARCH, f5_config

    backbone = TINY_BACKBONE[name]
    arch = TINY_UNET_ARCH if backbone == "UNetT" else TINY_ARCH
    path = tmp_path / f"tiny-{name}.yaml"
    path.write_text(yaml.safe_dump(f5_config(name, arch, backbone)))
    return path


def _object(s3: S3Server, dest: str, rel: str) -> bytes:
    key = dest.split(f"{BUCKET}/", 1)[1] + "/" + rel
    return bytes(s3.client(direct=True).get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _expected_revision(f5: F5Hub, name: str) -> dict[str, bytes]:
    """What a revision of ``name`` holds, less model.yaml: the hub's folder (its .pt left
    out), the vocoder under vocos/, and f5-tts's own vocab.txt where the folder has none."""
    _, checkpoint, pickled = F5_HUB[name]
    files = {rel: data for rel, data in f5.folder(name).items() if rel != pickled}
    assert checkpoint in files
    files.setdefault("vocab.txt", model_folder.packaged_vocab_file().read_bytes())
    files |= {f"vocos/{n}": f5.vocos[n] for n in ("config.yaml", "pytorch_model.bin")}
    return files


def _sync_link(
    tts_inference: list[str], env: dict[str, str], dest: str, cache: Path, link: Path, *extra: str
) -> None:
    proc = subprocess.run(
        [
            *tts_inference,
            "sync",
            "--source",
            dest,
            "--cache-dir",
            str(cache),
            "--link",
            str(link),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


def _speak(url: str, model: str) -> bytes:
    response = httpx.post(
        f"{url}/v1/audio/speech",
        json={
            "model": model,
            "input": "Hello there.",
            "voice": "default",
            "response_format": "wav",
        },
        timeout=600,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/wav")
    return response.content


def _wav_seconds(data: bytes) -> float:
    import io
    import wave

    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        return float(w.getnframes() / w.getframerate())


@pytest.mark.parametrize("name", list(F5_HUB))
def test_hub_folder_gets_model_yaml_from_f5_tts_own_config(
    tts_inference: list[str],
    s3: S3Server,
    bucket: str,
    hub: Hub,
    f5_hub: F5Hub,
    hub_env: dict[str, str],
    name: str,
) -> None:
    """The exact command of docs/install.md: the packaged config of the folder's name."""
    from importlib.resources import files

    repo, checkpoint, pickled = F5_HUB[name]
    dest = f"s3://{bucket}/models/{name}/packaged"
    proc = _publish(
        tts_inference, hub_env, f"hf://{repo}/{name}", dest, "--vocoder", f"hf://{VOCOS_REPO}"
    )
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc, hub_env)
    expected = _expected_revision(f5_hub, name)
    manifest = _manifest(s3, dest)
    assert sorted(manifest) == sorted([*expected, "model.yaml"])
    _assert_manifest(s3, dest, expected | {"model.yaml": _object(s3, dest, "model.yaml")})

    packaged = yaml.safe_load(
        files("f5_tts").joinpath(f"configs/{name}.yaml").read_text(encoding="utf-8")
    )["model"]
    config = yaml.safe_load(_object(s3, dest, "model.yaml"))
    assert config["name"] == name
    assert config["backbone"] == packaged["backbone"]
    assert config["arch"] == packaged["arch"]
    assert config["mel_spec"] == packaged["mel_spec"]
    assert config["checkpoint"] == checkpoint
    assert config["vocab"] == "vocab.txt"
    assert config["vocoder"] == {"name": "vocos", "path": "vocos"}
    assert config["source"] == f"f5-tts 1.1.22 f5_tts/configs/{name}.yaml"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["modelConfig"] == config["source"]

    # Only what the server loads left the hub: not the second copy of the weights.
    downloads = hub.server.traffic.downloads
    assert downloads[f"{repo}/{name}/{checkpoint}"] == 1
    if pickled is not None:
        assert downloads[f"{repo}/{name}/{pickled}"] == 0
        assert f"left out {pickled}" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", list(F5_HUB))
def test_hub_folder_publishes_syncs_and_serves(
    tts_inference: list[str],
    s3: S3Server,
    bucket: str,
    f5_hub: F5Hub,
    hub_env: dict[str, str],
    tmp_path: Path,
    name: str,
) -> None:
    """publish hf://SWivid/... --vocoder hf://charactr/... -> sync -> serve -> /v1/audio/speech.

    The weights are tiny, so the arch comes from --model-config (the packaged
    config's arch is the full-size one: test_full_size_hub_folder_serves).
    """
    require_tool("ffmpeg")
    repo, checkpoint, _ = F5_HUB[name]
    dest = f"s3://{bucket}/models/{name}/tiny"
    proc = _publish(
        tts_inference,
        hub_env,
        f"hf://{repo}/{name}",
        dest,
        "--vocoder",
        f"hf://{VOCOS_REPO}",
        "--model-config",
        str(_tiny_config(tmp_path, name)),
    )
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc, hub_env)

    link = tmp_path / "run" / "model"
    _sync_link(tts_inference, hub_env, dest, tmp_path / "cache", link)
    got = {
        p.relative_to(link).as_posix(): p.read_bytes()
        for p in link.rglob("*")
        if p.is_file() and p.name not in {".complete", "manifest.json", "model.yaml"}
    }
    assert got == _expected_revision(f5_hub, name)
    config = model_folder.load_config(link)
    assert (config["name"], config["backbone"], config["checkpoint"]) == (
        name,
        TINY_BACKBONE[name],
        checkpoint,
    )

    server = start_server(link, tmp_path / "serve.log", "--nfe-step", "2", env=hub_env)
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == [name]
        assert _wav_seconds(_speak(server.url, name)) > 0.1
    finally:
        assert stop(server) == 0


@pytest.mark.parametrize(
    ("source", "extra", "message"),
    [
        (
            "hf://SWivid/F5-TTS/F5TTS_v1_Base",
            (),
            "has no vocoder: F5TTS_v1_Base needs vocos/config.yaml and vocos/pytorch_model.bin "
            "(charactr/vocos-mel-24khz's files): pass --vocoder hf://charactr/vocos-mel-24khz",
        ),
        (
            "hf://SWivid/F5-TTS/F5TTS_v1_Base",
            ("--vocoder", f"hf://{VOCOS_REPO}", "--model", "F5TTS_v9_Huge"),
            "--model F5TTS_v9_Huge: f5-tts has no pretrained model of that name "
            "(known: F5TTS_v1_Base, F5TTS_Base, E2TTS_Base)",
        ),
        (
            "hf://test-org/finetuned/my-voice",
            ("--vocoder", f"hf://{VOCOS_REPO}"),
            "hf://test-org/finetuned/my-voice holds model_50000.pt but no model.yaml, and its "
            "name 'my-voice' is not a model f5-tts knows (F5TTS_v1_Base, F5TTS_Base, "
            "E2TTS_Base): pass --model NAME",
        ),
        (
            "hf://test-org/finetuned/my-voice",
            ("--vocoder", f"hf://{VOCOS_REPO}", "--model", "F5TTS_v1_Base"),
            "F5TTS_v1_Base's checkpoint is model_1250000.safetensors (as f5-tts downloads it "
            "from hf://SWivid/F5-TTS/F5TTS_v1_Base/), but the folder holds model_50000.pt",
        ),
    ],
    ids=["no-vocoder", "unknown-model", "unknown-folder-name", "wrong-checkpoint"],
)
def test_a_folder_that_cannot_serve_is_refused_before_any_download(
    tts_inference: list[str],
    s3: S3Server,
    bucket: str,
    hub: Hub,
    f5_hub: F5Hub,
    hub_env: dict[str, str],
    source: str,
    extra: tuple[str, ...],
    message: str,
) -> None:
    """No silent fallback: an unknown model with no model.yaml fails, naming what was expected."""
    if "finetuned" in source and "test-org/finetuned" not in hub.server.repos:
        hub.server.add_commit(
            "test-org/finetuned",
            {"my-voice/model_50000.pt": os.urandom(MIB), "my-voice/vocab.txt": b"a\n"},
        )
    dest = f"s3://{bucket}/models/refused/{hashlib.sha1(repr(extra).encode()).hexdigest()[:8]}"
    hub.server.traffic.reset()
    proc = _publish(tts_inference, hub_env, source, dest, *extra)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sum(hub.server.traffic.downloads.values()) == 0
    assert _keys(s3, dest) == []
    _assert_clean(proc, hub_env)


def _download_by_hand(f5: F5Hub, name: str, root: Path) -> tuple[Path, Path]:
    """The folders `hf download` leaves: ROOT/f5/NAME/... (with .cache/) and ROOT/vocos/."""
    repo, _, _ = F5_HUB[name]
    for rel, data in f5.repos[repo].items():
        if rel.startswith(name + "/"):
            (root / "f5" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "f5" / rel).write_bytes(data)
    meta = root / "f5" / ".cache" / "huggingface" / "download" / name
    meta.mkdir(parents=True)
    (meta / "vocab.txt.metadata").write_text("0123abcd\n")
    (root / "vocos").mkdir()
    for rel in ("config.yaml", "pytorch_model.bin"):
        (root / "vocos" / rel).write_bytes(f5.vocos[rel])
    return root / "f5" / name, root / "vocos"


@pytest.mark.parametrize("name", ["F5TTS_v1_Base", "F5TTS_Base"])
def test_a_folder_downloaded_by_hand_publishes_the_same_revision(
    tts_inference: list[str],
    s3: S3Server,
    bucket: str,
    f5_hub: F5Hub,
    hub_env: dict[str, str],
    tmp_path: Path,
    name: str,
) -> None:
    """`hf download SWivid/F5-TTS --include 'NAME/*'` + the vocoder: the same manifest as hf://."""
    folder, vocos = _download_by_hand(f5_hub, name, tmp_path / "by-hand")
    before = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    local = f"s3://{bucket}/models/{name}/by-hand"
    proc = _publish(tts_inference, hub_env, str(folder), local, "--vocoder", str(vocos))
    assert proc.returncode == 0, proc.stderr
    mirrored = f"s3://{bucket}/models/{name}/mirrored"
    repo = F5_HUB[name][0]
    proc = _publish(
        tts_inference, hub_env, f"hf://{repo}/{name}", mirrored, "--vocoder", f"hf://{VOCOS_REPO}"
    )
    assert proc.returncode == 0, proc.stderr
    assert _manifest(s3, local) == _manifest(s3, mirrored)
    assert "model.yaml" in _manifest(s3, local)
    # The source folder is never written to.
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == before


def test_a_local_vocoder_folder_needs_both_files(
    tts_inference: list[str], bucket: str, f5_hub: F5Hub, hub_env: dict[str, str], tmp_path: Path
) -> None:
    folder, vocos = _download_by_hand(f5_hub, "F5TTS_v1_Base", tmp_path)
    (vocos / "pytorch_model.bin").unlink()
    proc = _publish(
        tts_inference,
        hub_env,
        str(folder),
        f"s3://{bucket}/models/F5TTS_v1_Base/half-vocoder",
        "--vocoder",
        str(vocos),
    )
    assert proc.returncode != 0
    assert f"--vocoder {vocos}: expected a folder holding config.yaml and pytorch_model.bin" in (
        proc.stderr
    )


def test_a_folder_that_is_no_tts_model_is_published_as_it_is(
    tts_inference: list[str], s3: S3Server, bucket: str, hub_env: dict[str, str], tmp_path: Path
) -> None:
    """A Whisper model (no f5-tts checkpoint, no model name) gets no model.yaml."""
    folder = tmp_path / "whisper-tiny"
    folder.mkdir()
    files = {"model.safetensors": os.urandom(1000), "config.json": b"{}"}
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    dest = f"s3://{bucket}/models/whisper-tiny/v1"
    proc = _publish(tts_inference, hub_env, str(folder), dest)
    assert proc.returncode == 0, proc.stderr
    _assert_manifest(s3, dest, files)


@pytest.mark.slow
def test_full_size_hub_folder_serves(
    tts_inference: list[str],
    s3: S3Server,
    bucket: str,
    hub_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """F5TTS_v1_Base's real arch and file names (random weights), with the packaged config.

    The folders as `hf download` leaves them, published with no --model-config:
    model.yaml comes from f5-tts's own configs/F5TTS_v1_Base.yaml, and the
    server loads the 1.35 GB checkpoint through it and speaks.
    """
    require_tool("ffmpeg")
    from tts_inference.tiny_model import FULL_ARCH, make_model

    made = make_model(tmp_path / "made", arch=FULL_ARCH, vocoder="full", name="unused")
    folder = tmp_path / "f5" / "F5TTS_v1_Base"
    folder.mkdir(parents=True)
    for rel in ("model_1250000.safetensors", "vocab.txt"):
        (made / rel).rename(folder / rel)
    vocos = made / "vocos"

    # Straight to moto, in whole objects: moto reads a whole object for each ranged GET, and
    # the counting proxy would add a copy of each byte.
    env = hub_env | {"AWS_ENDPOINT_URL": s3.direct_endpoint}
    dest = f"s3://{bucket}/models/F5TTS_v1_Base/full-size"
    proc = _publish(tts_inference, env, str(folder), dest, "--vocoder", str(vocos))
    assert proc.returncode == 0, proc.stderr
    link = tmp_path / "run" / "model"
    _sync_link(tts_inference, env, dest, tmp_path / "cache", link, "--chunk-mib", "2048")
    assert model_folder.load_config(link)["arch"] == FULL_ARCH

    server = start_server(link, tmp_path / "serve.log", "--nfe-step", "1", env=hub_env, timeout=600)
    try:
        assert _wav_seconds(_speak(server.url, "F5TTS_v1_Base")) > 0.1
    finally:
        assert stop(server) == 0
