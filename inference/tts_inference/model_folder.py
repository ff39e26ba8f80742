"""The model folder: what a synced F5-TTS model folder holds and where its files are.

Every model folder the server loads carries its own ``model.yaml`` beside the
checkpoint, the vocab and the vocoder folder::

    model.yaml                  name, backbone, arch, mel_spec; checkpoint, vocab, vocoder (paths in the folder)
    model_1250000.safetensors   the checkpoint, as the hub names it (EMA weights, "ema_model.*" keys)
    vocab.txt                   the vocab the checkpoint was trained with
    vocos/config.yaml           the Vocos vocoder (charactr/vocos-mel-24khz's two files)
    vocos/pytorch_model.bin

The hub's folders (``SWivid/F5-TTS/F5TTS_v1_Base/`` and the rest) hold no
model.yaml: f5-tts keeps each model's arch in its own package
(``f5_tts/configs/<name>.yaml``) and picks the checkpoint's file name in
``f5_tts.api.F5TTS``. ``plan`` works out the model.yaml such a folder needs
(``publish`` writes it into the published revision), from the pinned f5-tts's
packaged config, read as a file from the installed package: nothing of f5_tts
or torch is imported, so publish and sync stay light. An unknown model name is
an error that says what was expected, never a guess.

``load_config`` and ``open_folder`` are the reading side: the engine finds
every file through them, and make-tiny-model writes folders with
``model_config``.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

CONFIG_NAME = "model.yaml"
VOCAB_NAME = "vocab.txt"
VOCODER_NAME = "vocos"
VOCODER_DIR = "vocos"
VOCODER_CONFIG_NAME = "config.yaml"
VOCODER_WEIGHTS_NAME = "pytorch_model.bin"
#: The files of a Vocos repo (charactr/vocos-mel-24khz) that a model folder keeps in vocos/.
VOCODER_FILES = (VOCODER_CONFIG_NAME, VOCODER_WEIGHTS_NAME)
#: The vocoder's hub repo, as f5_tts.infer.utils_infer.load_vocoder downloads it.
VOCODER_REPO = "charactr/vocos-mel-24khz"

REQUIRED_KEYS = ("name", "backbone", "arch", "mel_spec", "checkpoint", "vocab", "vocoder")
MEL_KEYS = ("target_sample_rate", "n_mel_channels", "hop_length", "win_length", "n_fft")
#: The backbones the engine builds: class name -> module under f5_tts.model.backbones.
BACKBONES: dict[str, str] = {"DiT": "dit", "UNetT": "unett"}

#: The installed package whose configs/<name>.yaml hold each model's arch.
F5_PACKAGE = "f5_tts"
F5_DISTRIBUTION = "f5-tts"
#: What f5-tts's trainer and the hub name checkpoints: model_<step>.safetensors|.pt, model_last.pt.
CHECKPOINT_PATTERN = re.compile(r"model_(\d+|last)\.(safetensors|pt)")


class ModelFolderError(ValueError):
    """A model folder (or a folder about to be published as one) is incomplete or unknown."""


@dataclass(frozen=True)
class KnownModel:
    """A model f5-tts downloads by name: its hub repo and checkpoint file (f5_tts.api.F5TTS)."""

    name: str
    repo: str
    checkpoint: str

    @property
    def hub_folder(self) -> str:
        return f"hf://{self.repo}/{self.name}"


#: The pretrained models of f5_tts.api.F5TTS (mel_spec_type vocos), with the checkpoint it
#: downloads for each: hf://SWivid/<repo>/<name>/model_<step>.safetensors
#: (tests/inference/test_f5_contract.py checks these against the installed f5_tts/api.py).
KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel("F5TTS_v1_Base", "SWivid/F5-TTS", "model_1250000.safetensors"),
        KnownModel("F5TTS_Base", "SWivid/F5-TTS", "model_1200000.safetensors"),
        KnownModel("E2TTS_Base", "SWivid/E2-TTS", "model_1200000.safetensors"),
    )
}


def known_names() -> str:
    return ", ".join(KNOWN_MODELS)


def model_config(
    *,
    name: str,
    backbone: str,
    arch: Mapping[str, Any],
    mel_spec: Mapping[str, Any],
    checkpoint: str,
    vocab: str = VOCAB_NAME,
    vocoder_path: str = VOCODER_DIR,
    source: str | None = None,
) -> dict[str, Any]:
    """A model.yaml document; file names are relative to the model folder."""
    config: dict[str, Any] = {
        "name": name,
        "backbone": backbone,
        "arch": dict(arch),
        "mel_spec": dict(mel_spec),
        "checkpoint": checkpoint,
        "vocab": vocab,
        "vocoder": {"name": VOCODER_NAME, "path": vocoder_path},
    }
    if source is not None:
        config["source"] = source
    return config


def check_config(config: object, where: str) -> dict[str, Any]:
    """``config`` as a model.yaml mapping, or ModelFolderError saying what is wrong with it."""
    if not isinstance(config, dict):
        raise ModelFolderError(f"{where}: expected a mapping, got {type(config).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ModelFolderError(f"{where}: missing keys {', '.join(missing)}")
    for key in ("arch", "mel_spec", "vocoder"):
        if not isinstance(config[key], dict):
            raise ModelFolderError(f"{where}: {key} must be a mapping")
    for key in ("checkpoint", "vocab"):
        if not isinstance(config[key], str) or not config[key]:
            raise ModelFolderError(f"{where}: {key} must be a file name in the folder")
    vocoder_missing = [key for key in ("name", "path") if key not in config["vocoder"]]
    if vocoder_missing:
        raise ModelFolderError(f"{where}: vocoder is missing {', '.join(vocoder_missing)}")
    mel_missing = [key for key in MEL_KEYS if key not in config["mel_spec"]]
    if mel_missing:
        raise ModelFolderError(f"{where}: mel_spec is missing {', '.join(mel_missing)}")
    return config


def load_config(model_dir: Path) -> dict[str, Any]:
    """The model.yaml of a model folder; its file names are relative to the folder."""
    path = Path(model_dir) / CONFIG_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelFolderError(
            f"{path} is missing: a model folder carries its own {CONFIG_NAME} "
            f"(tts-inference publish writes one for {known_names()}; "
            "make-tiny-model writes one)"
        ) from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelFolderError(f"{path}: not YAML: {exc}") from None
    return check_config(config, str(path))


@dataclass(frozen=True)
class ModelFiles:
    """A model folder's config and the paths of the files the engine loads."""

    folder: Path
    config: dict[str, Any]
    checkpoint: Path
    vocab: Path
    vocoder_dir: Path

    @property
    def vocoder_config(self) -> Path:
        return self.vocoder_dir / VOCODER_CONFIG_NAME

    @property
    def vocoder_weights(self) -> Path:
        return self.vocoder_dir / VOCODER_WEIGHTS_NAME


def open_folder(model_dir: Path) -> ModelFiles:
    """Read model.yaml and find each file it names; ModelFolderError names the first one missing."""
    folder = Path(model_dir)
    config = load_config(folder)
    vocoder_dir = folder / str(config["vocoder"]["path"])
    files = ModelFiles(
        folder,
        config,
        folder / config["checkpoint"],
        folder / config["vocab"],
        vocoder_dir,
    )
    for path, what in (
        (files.checkpoint, "checkpoint"),
        (files.vocab, "vocab"),
        (files.vocoder_config, "vocoder config"),
        (files.vocoder_weights, "vocoder weights"),
    ):
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing: the model folder has no {what}")
    return files


# --- f5-tts's packaged configs, read as files ------------------------------------------------


def f5_package_dirs() -> list[Path]:
    """The installed f5_tts package's folders, found without importing (running) any of it."""
    try:
        spec = importlib.util.find_spec(F5_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelFolderError(
            f"f5-tts is not installed: its packaged configs ({F5_PACKAGE}/configs/<name>.yaml) "
            "give each model's arch (install tts-operator[inference], or give --model-config)"
        )
    return [Path(p) for p in spec.submodule_search_locations]


def f5_version() -> str:
    try:
        return version(F5_DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def _package_file(relative: str) -> Path:
    dirs = f5_package_dirs()
    for folder in dirs:
        path = folder / relative
        if path.is_file():
            return path
    raise ModelFolderError(
        f"the installed f5-tts {f5_version()} has no {F5_PACKAGE}/{relative} "
        f"(looked in {', '.join(map(str, dirs))})"
    )


def packaged_config_file(name: str) -> Path:
    """f5-tts's own config of model ``name`` (f5_tts/configs/<name>.yaml), as a path."""
    return _package_file(f"configs/{name}.yaml")


def packaged_vocab_file() -> Path:
    """The vocab.txt f5-tts ships and uses when given none (utils_infer.load_model)."""
    return _package_file("infer/examples/vocab.txt")


def read_f5_config(path: Path) -> dict[str, Any]:
    """The ``model`` section of an f5-tts model config (f5_tts/configs/*.yaml's format)."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelFolderError(f"cannot read the model config {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ModelFolderError(f"{path}: not YAML: {exc}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise ModelFolderError(
            f"{path}: expected an f5-tts model config (a 'model' mapping with backbone, "
            "arch and mel_spec, as in f5_tts/configs/F5TTS_v1_Base.yaml)"
        )
    missing = [key for key in ("backbone", "arch", "mel_spec") if key not in model]
    if missing:
        raise ModelFolderError(f"{path}: model is missing {', '.join(missing)}")
    if not isinstance(model["arch"], dict) or not isinstance(model["mel_spec"], dict):
        raise ModelFolderError(f"{path}: model.arch and model.mel_spec must be mappings")
    return model


# --- completing a folder laid out as the hub lays it out --------------------------------------


@dataclass(frozen=True)
class Completion:
    """What a folder without model.yaml needs to be a model folder."""

    config: dict[str, Any]  # the model.yaml to add
    add_files: dict[str, Path]  # other files to add: relative path -> file (the package's vocab)
    source: str  # where the arch came from, for the log
    skip: frozenset[str] = frozenset()  # the folder's other checkpoints, which nothing loads

    def model_yaml(self) -> bytes:
        return yaml.safe_dump(self.config, sort_keys=False).encode()


def _checkpoints(files: Collection[str]) -> list[str]:
    return sorted(f for f in files if CHECKPOINT_PATTERN.fullmatch(f))


def plan(
    files: Collection[str],
    *,
    folder_name: str | None,
    where: str,
    model: str | None = None,
    config_file: Path | None = None,
) -> Completion | None:
    """The model.yaml (and files) a folder holding ``files`` needs, or None if it needs none.

    ``files`` are paths relative to the folder (a local folder's, or a hub
    listing's before anything is downloaded). The model is ``model`` if given,
    else ``folder_name`` (the hub's folder name: F5TTS_v1_Base, ...) when f5-tts
    knows it; its arch comes from ``config_file`` (a file in f5-tts's config
    format) or else from the installed f5-tts's configs/<name>.yaml. A folder
    with a model.yaml needs nothing; a folder that holds no f5-tts checkpoint
    and names no model (a Whisper model, say) is not a TTS model folder and
    needs nothing either. Anything else that cannot be completed raises
    ModelFolderError saying what was expected.
    """
    present = set(files)
    if CONFIG_NAME in present:
        if model is not None or config_file is not None:
            raise ModelFolderError(
                f"{where} already has a {CONFIG_NAME}: leave out --model and --model-config"
            )
        return None
    checkpoints = _checkpoints(present)
    known = KNOWN_MODELS.get(model or folder_name or "")
    if model is not None and known is None and config_file is None:
        raise ModelFolderError(
            f"--model {model}: f5-tts has no pretrained model of that name (known: "
            f"{known_names()}); give its f5-tts config with --model-config FILE"
        )
    if known is None and config_file is None:
        if not checkpoints:
            return None  # not an F5-TTS model folder: published as it is
        raise ModelFolderError(
            f"{where} holds {', '.join(checkpoints)} but no {CONFIG_NAME}, and its name "
            f"{folder_name!r} is not a model f5-tts knows ({known_names()}): pass --model NAME "
            f"for one of those, --model-config FILE (an f5-tts model config) for another, "
            f"or add a {CONFIG_NAME}"
        )

    if config_file is not None:
        section = read_f5_config(config_file)
        name = model or str(section.get("name") or folder_name or "model")
        source = str(config_file)
    else:
        assert known is not None
        name = known.name
        packaged = packaged_config_file(name)
        section = read_f5_config(packaged)
        source = f"f5-tts {f5_version()} {F5_PACKAGE}/configs/{packaged.name}"

    if known is not None and known.checkpoint in present:
        checkpoint = known.checkpoint
    elif known is not None and config_file is None:
        held = ", ".join(checkpoints) or "no checkpoint"
        raise ModelFolderError(
            f"{where}: {name}'s checkpoint is {known.checkpoint} (as f5-tts downloads it from "
            f"{known.hub_folder}/), but the folder holds {held}"
        )
    elif len(checkpoints) == 1:
        checkpoint = checkpoints[0]
    else:
        held = ", ".join(checkpoints) or "none"
        raise ModelFolderError(
            f"{where}: expected one checkpoint named model_<step>.safetensors (or .pt), "
            f"found {held}"
        )

    backbone = section["backbone"]
    if backbone not in BACKBONES:
        raise ModelFolderError(
            f"{source}: backbone {backbone!r} is not supported (only {', '.join(BACKBONES)})"
        )
    mel = section["mel_spec"]
    mel_missing = [key for key in MEL_KEYS if key not in mel]
    if mel_missing:
        raise ModelFolderError(f"{source}: mel_spec is missing {', '.join(mel_missing)}")
    if mel.get("mel_spec_type", VOCODER_NAME) != VOCODER_NAME:
        raise ModelFolderError(
            f"{source}: mel_spec_type {mel.get('mel_spec_type')!r} is not supported (only vocos)"
        )
    vocoder = [f"{VOCODER_DIR}/{n}" for n in VOCODER_FILES]
    if not all(path in present for path in vocoder):
        raise ModelFolderError(
            f"{where} has no vocoder: {name} needs {' and '.join(vocoder)} "
            f"({VOCODER_REPO}'s files): pass --vocoder hf://{VOCODER_REPO}, or --vocoder DIR "
            "for a folder holding them"
        )

    add_files: dict[str, Path] = {}
    if VOCAB_NAME not in present:
        # As utils_infer.load_model does when given no vocab_file.
        add_files[VOCAB_NAME] = packaged_vocab_file()
    config = model_config(
        name=name,
        backbone=backbone,
        arch=section["arch"],
        mel_spec=mel,
        checkpoint=checkpoint,
        source=source,
    )
    # The hub keeps F5TTS_Base's and E2TTS_Base's weights twice (.pt and .safetensors).
    skip = frozenset(c for c in checkpoints if c != checkpoint)
    return Completion(config, add_files, source, skip)
