"""The inference image leaves out what f5-tts declares but serving never imports.

The server, publish, sync, the flash_attn installer and make-tiny-model run
here on the tiny model with every left-out distribution absent, as in the
image; a new hard import of one of them fails this test (and would fail the
image).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.chart import images
from tests.chart.blocked import blocked_modules
from tests.chart.conftest import BUCKET, ImageServer, blocked_command, image_env
from tests.support.s3 import S3Server

pytestmark = pytest.mark.slow

# Named in the issue: training and UI packages the serving path must not import.
TRAINING_AND_UI = {"gradio", "wandb", "datasets", "bitsandbytes"}


def test_the_left_out_packages_are_the_training_and_ui_ones(left_out: tuple[str, ...]) -> None:
    excluded = images.read_names(images.EXCLUDED_FILE)
    assert excluded == TRAINING_AND_UI
    assert excluded <= set(left_out)
    lock = images.read_lock(images.LOCKS / "inference.txt")
    assert not set(left_out) & set(lock), "the inference lock installs a left-out package"
    for dist in sorted(TRAINING_AND_UI):
        assert dist in {m.split(".")[0] for m in blocked_modules({dist})}, dist


def test_server_speaks_with_the_left_out_packages_absent(image_server: ImageServer) -> None:
    r = httpx.post(
        f"{image_server.url}/v1/audio/speech",
        json={
            "model": "tiny",
            "input": "Hello from the image.",
            "voice": "default",
            "response_format": "wav",
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.content[:4] == b"RIFF"
    assert image_server.proc.poll() is None
    assert set(image_server.blocked) >= TRAINING_AND_UI


def _run(
    blocked: tuple[str, ...], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        blocked_command(blocked, *args),
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=images.ROOT,
    )


def test_publish_sync_and_installer_run_with_the_left_out_packages_absent(
    tiny_model: Path, bucket: S3Server, left_out: tuple[str, ...], tmp_path: Path
) -> None:
    from tests.inference.test_flash_attn import ABI, VERSION, build_wheel

    env = image_env(bucket.env(endpoint=bucket.direct_endpoint), home=tmp_path)
    source = f"s3://{BUCKET}/models/tiny/image-test/"
    published = _run(left_out, env, "publish", str(tiny_model), source)
    assert published.returncode == 0, published.stdout + published.stderr

    cache = tmp_path / "cache"
    synced = _run(left_out, env, "sync", "--source", source, "--cache-dir", str(cache))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    (model,) = [p for p in (cache / "models" / "tiny").iterdir() if not p.name.startswith(".")]
    assert (model / ".complete").exists()
    assert (model / "model.yaml").exists()

    wheel = build_wheel(tmp_path / "wheels", ABI.wheel_name(VERSION))
    installed = _run(
        left_out,
        env,
        "install-flash-attn",
        "--wheel",
        str(wheel),
        "--cache-dir",
        str(cache),
        "--abi-tag",
        ABI.tag,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    markers = list((cache / "pylib" / "flash-attn").glob("*/.complete"))
    assert len(markers) == 1
    assert json.loads(markers[0].read_text())["wheel"] == wheel.name


def test_engine_imports_without_the_left_out_packages(left_out: tuple[str, ...]) -> None:
    """The engine and tiny_model take f5-tts's own classes without f5_tts/model/__init__.py."""
    code = (
        "import sys; from tests.chart.blocked import install; "
        f"install({sorted(left_out)!r}); "
        "import tts_inference.engine.f5 as f5, tts_inference.tiny_model; "
        "assert f5.CFM.__module__ == 'f5_tts.model.cfm', f5.CFM; "
        "assert f5.DiT.__module__ == 'f5_tts.model.backbones.dit', f5.DiT; "
        "assert 'f5_tts.model.trainer' not in sys.modules; print('ok')"
    )
    proc = subprocess.run(
        [*blocked_command((), "--version")[:1], "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env=image_env(),
        cwd=images.ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_make_tiny_model_runs_with_the_left_out_packages_absent(
    left_out: tuple[str, ...], tmp_path: Path
) -> None:
    env = image_env(home=tmp_path)
    made = _run(left_out, env, "make-tiny-model", str(tmp_path / "tiny"))
    assert made.returncode == 0, made.stdout + made.stderr
    assert (tmp_path / "tiny" / "model.yaml").is_file()
