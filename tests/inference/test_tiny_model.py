"""make-tiny-model: the real f5-tts and vocos loaders load it and the real infer path runs it (CPU)."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tts_inference import tiny_model
from tts_inference.model_folder import ModelFolderError, load_config, packaged_vocab_file
from tts_inference.tiny_model import FULL_ARCH, TINY_ARCH, make_model

SAMPLE_RATE = 24000
EXPECTED_FILES = {
    "model.yaml",
    "model_1250000.safetensors",
    "vocab.txt",
    "vocos/config.yaml",
    "vocos/pytorch_model.bin",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Nothing here may reach a model hub."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE.items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """One tiny model for the module, and the seconds make_model took."""
    started = time.perf_counter()
    folder = make_model(tmp_path_factory.mktemp("tiny") / "model")
    return folder, time.perf_counter() - started


@pytest.fixture(scope="module")
def tiny(made: tuple[Path, float]) -> Path:
    return made[0]


@pytest.fixture(scope="module")
def loaded(tiny: Path) -> tuple[Any, Any]:
    """The tiny model and vocoder, loaded by f5-tts's own loaders as the server loads any model."""
    from f5_tts.infer.utils_infer import load_model, load_vocoder
    from f5_tts.model import DiT

    config = load_config(tiny)
    assert config["backbone"] == "DiT"
    model = load_model(
        DiT,
        config["arch"],
        str(tiny / config["checkpoint"]),
        mel_spec_type=config["mel_spec"]["mel_spec_type"],
        vocab_file=str(tiny / config["vocab"]),
        device="cpu",
    )
    vocoder = load_vocoder(
        config["vocoder"]["name"],
        is_local=True,
        local_path=str(tiny / config["vocoder"]["path"]),
        device="cpu",
    )
    return model, vocoder


def _files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under folder."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _write_ref_wav(path: Path, seconds: float = 1.5) -> None:
    """A voiced-looking reference: a 150 Hz tone with harmonics and a little noise, 16-bit mono."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    signal = sum(0.2 / k * np.sin(2 * math.pi * 150 * k * t) for k in range(1, 5))
    signal = signal + 0.01 * rng.standard_normal(t.shape)
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def test_writes_exactly_the_model_folder_contract(made: tuple[Path, float]) -> None:
    folder, seconds = made
    assert set(_files(folder)) == EXPECTED_FILES
    size = tiny_model.folder_size(folder)
    assert 1_000_000 < size < 5_000_000, size
    # Mostly importing f5_tts; the writing itself takes well under a second.
    assert seconds < 30, seconds
    # No temporary folder is left beside it.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_model_yaml_describes_the_model(tiny: Path) -> None:
    config = load_config(tiny)
    assert config == yaml.safe_load((tiny / "model.yaml").read_text())
    assert config["name"] == "tiny"
    assert config["backbone"] == "DiT"
    assert config["arch"] == TINY_ARCH
    assert config["mel_spec"] == {
        "target_sample_rate": 24000,
        "n_mel_channels": 100,
        "hop_length": 256,
        "win_length": 1024,
        "n_fft": 1024,
        "mel_spec_type": "vocos",
    }
    assert config["checkpoint"] == "model_1250000.safetensors"
    assert config["vocab"] == "vocab.txt"
    assert config["vocoder"] == {"name": "vocos", "path": "vocos"}


def test_vocab_is_the_packages_own(tiny: Path) -> None:
    assert (tiny / "vocab.txt").read_bytes() == packaged_vocab_file().read_bytes()


def test_load_config_explains_a_missing_or_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match=r"model\.yaml is missing.*F5TTS_v1_Base"):
        load_config(tmp_path)
    (tmp_path / "model.yaml").write_text("name: x\nbackbone: DiT\n")
    with pytest.raises(ModelFolderError, match="missing keys arch"):
        load_config(tmp_path)


def test_full_arch_is_the_packages_f5tts_v1_base() -> None:
    from importlib.resources import files

    packaged = yaml.safe_load(
        files("f5_tts").joinpath("configs/F5TTS_v1_Base.yaml").read_text(encoding="utf-8")
    )
    assert packaged["model"]["arch"] == FULL_ARCH
    assert packaged["model"]["backbone"] == "DiT"
    assert {k: v for k, v in packaged["model"]["mel_spec"].items()} == tiny_model.MEL_SPEC


def test_full_size_checkpoint_has_the_published_key_layout() -> None:
    """F5TTS_v1_Base/model_1250000.safetensors holds 366 tensors: 364 ema_model.transformer.* + step, initted."""
    import torch

    with torch.device("meta"):
        model = tiny_model.build_cfm(FULL_ARCH, packaged_vocab_file())
    keys = list(tiny_model.checkpoint_tensors(model))
    assert len(keys) == 366
    assert sum(k.startswith("ema_model.transformer.") for k in keys) == 364
    others = {k for k in keys if not k.startswith("ema_model.transformer.")}
    assert others == {"step", "initted"}
    params = sum(p.numel() for p in model.parameters())
    assert 330e6 < params < 340e6, params  # the paper's "~336M"


def test_checkpoint_is_ema_state_dict_in_safetensors(tiny: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(tiny / "model_1250000.safetensors"))
    names = set(tensors) - {"step", "initted"}
    assert names
    assert all(k.startswith("ema_model.transformer.") for k in names)
    assert int(tensors["step"]) == 1_250_000
    assert bool(tensors["initted"])
    # Every weight is random: none of the layers DiT zero-initialises is left at zero.
    assert not [k for k in names if tensors[k].is_floating_point() and not tensors[k].any()]


def test_package_loaders_load_it_strictly(tiny: Path, loaded: tuple[Any, Any]) -> None:
    """load_model and load_vocoder call load_state_dict strictly: no missing or unexpected keys."""
    from safetensors.torch import load_file

    model, vocoder = loaded
    assert type(model).__name__ == "CFM"
    assert type(model.transformer).__name__ == "DiT"
    assert type(vocoder).__name__ == "Vocos"
    assert next(model.parameters()).dtype.is_floating_point
    # The weights in memory are the file's, not a fresh random init.
    tensors = load_file(str(tiny / "model_1250000.safetensors"))
    state = model.state_dict()
    for key, value in tensors.items():
        if key.startswith("ema_model."):
            assert state[key.removeprefix("ema_model.")].equal(value), key
    # The vocoder is the tiny one from the folder's config.yaml.
    assert vocoder.backbone.embed.out_channels == 32


def test_infer_process_speaks(tmp_path: Path, loaded: tuple[Any, Any]) -> None:
    import torch
    from f5_tts.infer.utils_infer import infer_process, preprocess_ref_audio_text

    model, vocoder = loaded
    ref = tmp_path / "ref.wav"
    _write_ref_wav(ref)
    ref_audio, ref_text = preprocess_ref_audio_text(str(ref), "This is the reference voice.")
    torch.manual_seed(0)
    started = time.perf_counter()
    wave_out, sample_rate, spectrogram = infer_process(
        ref_audio,
        ref_text,
        "Hello from a tiny random model on Kubernetes.",
        model,
        vocoder,
        mel_spec_type="vocos",
        nfe_step=4,
        device="cpu",
        progress=None,
    )
    seconds = time.perf_counter() - started
    assert sample_rate == SAMPLE_RATE
    assert isinstance(wave_out, np.ndarray)
    assert wave_out.ndim == 1
    assert wave_out.dtype in (np.float32, np.float64)
    assert np.isfinite(wave_out).all()
    duration = len(wave_out) / sample_rate
    assert duration > 0.2, duration
    assert spectrogram.shape[0] == 100
    assert seconds < 30, seconds


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, tiny: Path) -> None:
    again = make_model(tmp_path / "again", seed=0)
    other = make_model(tmp_path / "other", seed=1)
    assert _files(again) == _files(tiny)
    ckpt = "model_1250000.safetensors"
    assert _files(other)[ckpt] != _files(tiny)[ckpt]
    assert _files(other)["vocos/pytorch_model.bin"] != _files(tiny)["vocos/pytorch_model.bin"]
    assert _files(other)["vocab.txt"] == _files(tiny)["vocab.txt"]


def test_seed_does_not_disturb_the_callers_rng(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_model(tmp_path / "m", seed=7)
    assert torch.rand(3).equal(expected)


def test_refuses_an_existing_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        make_model(target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    # An empty folder is fine (an emptyDir or a freshly made volume).
    empty = tmp_path / "empty"
    empty.mkdir()
    assert set(_files(make_model(empty))) == EXPECTED_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "taken"]


def test_failed_write_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_model, "checkpoint_tensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_model(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_unknown_vocoder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocoder must be one of"):
        make_model(tmp_path / "m", vocoder="huge")
    assert list(tmp_path.iterdir()) == []


def test_cli_arguments() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    tiny_model.add_arguments(parser)
    args = parser.parse_args(["out", "--full-size", "--name", "big", "--seed", "3"])
    assert (args.out_dir, args.full_size, args.name, args.seed) == (Path("out"), True, "big", 3)
    args = parser.parse_args(["out"])
    assert (args.full_size, args.name, args.seed) == (False, None, 0)


def test_python_m_writes_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "cli-model"
    env = {**os.environ, **OFFLINE}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tts_inference.tiny_model",
            str(out),
            "--name",
            "demo",
            "--seed",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(_files(out)) == EXPECTED_FILES
    assert load_config(out)["name"] == "demo"
    path, size, seconds = proc.stdout.strip().splitlines()[-1].split("\t")
    assert Path(path) == out
    assert size == f"{tiny_model.folder_size(out)} bytes"
    assert seconds.endswith(" s")
    # A second run refuses to overwrite the finished model.
    assert tiny_model.run(_namespace(out)) == 1


def _namespace(out: Path) -> Any:
    import argparse

    return argparse.Namespace(out_dir=out, full_size=False, name=None, seed=0)
