"""`tts-inference make-tiny-model OUT_DIR`: a random-weight F5-TTS model folder.

The folder has the same files, names and formats as the published model
(``SWivid/F5-TTS`` ``F5TTS_v1_Base/model_1250000.safetensors`` and its
``vocab.txt``) and vocoder (``charactr/vocos-mel-24khz``: ``config.yaml`` and
``pytorch_model.bin``), plus the ``model.yaml`` that every model folder of this
project carries (the format is tts_inference.model_folder's), so the tiny model
and F5TTS_v1_Base load through the same code::

    OUT_DIR/
      model.yaml                  the model's own config (see model_config)
      model_1250000.safetensors   EMA weights, keys "ema_model.<name>", plus "step", "initted"
      vocab.txt                   the vocab f5-tts ships (f5_tts/infer/examples/vocab.txt)
      vocos/config.yaml           a vocos config Vocos.from_hparams reads
      vocos/pytorch_model.bin     the vocoder's state dict (torch.save)

The model is built from f5-tts's own DiT and CFM classes and the vocoder from
vocos's own classes, so loading it exercises the real loaders
(``f5_tts.infer.utils_infer.load_model`` and ``load_vocoder``). Its weights are
random: it speaks noise. With ``--full-size`` it has F5TTS_v1_Base's
architecture and the real vocoder's, for speed figures without the real weights.

The folder is written under a hidden temporary name beside OUT_DIR and renamed
into place last, so a half-written folder is never taken for a model.

torch, f5_tts and vocos are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tts_inference.model_folder import (
    CONFIG_NAME,
    KNOWN_MODELS,
    VOCAB_NAME,
    VOCODER_CONFIG_NAME,
    VOCODER_DIR,
    VOCODER_WEIGHTS_NAME,
    packaged_vocab_file,
)
from tts_inference.model_folder import model_config as folder_config

if TYPE_CHECKING:
    import torch

CHECKPOINT_STEP = 1_250_000
#: F5TTS_v1_Base's checkpoint name on the hub: model_1250000.safetensors.
CHECKPOINT_NAME = KNOWN_MODELS["F5TTS_v1_Base"].checkpoint
EMA_PREFIX = "ema_model."

# The published checkpoint also holds the EMA wrapper's bookkeeping; the loader drops these two keys.
EMA_BOOKKEEPING = ("step", "initted")

#: A DiT small enough to write, load and run on a CPU in about a second.
TINY_ARCH: dict[str, Any] = {
    "dim": 64,
    "depth": 2,
    "heads": 2,
    "ff_mult": 2,
    "text_dim": 32,
    "text_mask_padding": True,
    "qk_norm": None,
    "conv_layers": 1,
    "pe_attn_head": None,
    "attn_backend": "torch",
    "attn_mask_enabled": False,
    "checkpoint_activations": False,
}

#: A tiny UNetT (E2TTS_Base's backbone, with E2TTS_Base's options), for the same purpose.
TINY_UNET_ARCH: dict[str, Any] = {
    "dim": 64,
    "depth": 2,
    "heads": 2,
    "ff_mult": 2,
    "text_mask_padding": False,
    "pe_attn_head": 1,
}

#: F5TTS_v1_Base's arch, as in f5-tts's f5_tts/configs/F5TTS_v1_Base.yaml (a test checks they match).
FULL_ARCH: dict[str, Any] = {
    "dim": 1024,
    "depth": 22,
    "heads": 16,
    "ff_mult": 2,
    "text_dim": 512,
    "text_mask_padding": True,
    "qk_norm": None,
    "conv_layers": 4,
    "pe_attn_head": None,
    "attn_backend": "torch",
    "attn_mask_enabled": False,
    "checkpoint_activations": False,
}

#: model.yaml's name for a folder of FULL_ARCH with random weights.
FULL_NAME = "F5TTS_v1_Base-random"

#: The mel settings of F5TTS_v1_Base and of the vocos-mel-24khz vocoder.
MEL_SPEC: dict[str, Any] = {
    "target_sample_rate": 24000,
    "n_mel_channels": 100,
    "hop_length": 256,
    "win_length": 1024,
    "n_fft": 1024,
    "mel_spec_type": "vocos",
}

# Vocoder backbone sizes: "full" is charactr/vocos-mel-24khz's.
VOCODER_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 32, "intermediate_dim": 64, "num_layers": 1},
    "full": {"dim": 512, "intermediate_dim": 1536, "num_layers": 8},
}

# Zero-initialised layers (DiT zeroes its AdaLN and output layers) get this instead, so every
# weight is random and a weight that failed to load shows in the output.
_INIT_STD = 0.02


def model_config(name: str, arch: Mapping[str, Any], backbone: str = "DiT") -> dict[str, Any]:
    """The model.yaml of a model folder laid out as make_model writes it."""
    return folder_config(
        name=name, backbone=backbone, arch=arch, mel_spec=MEL_SPEC, checkpoint=CHECKPOINT_NAME
    )


def f5_config(name: str, arch: Mapping[str, Any], backbone: str = "DiT") -> dict[str, Any]:
    """The same model as a config in f5-tts's own format (f5_tts/configs/<name>.yaml's).

    ``publish --model-config`` reads this format; it is how a folder laid out as
    the hub lays out F5TTS_v1_Base but holding these weights is published.
    """
    return {
        "model": {
            "name": name,
            "tokenizer": "custom",
            "tokenizer_path": None,
            "backbone": backbone,
            "arch": dict(arch),
            "mel_spec": dict(MEL_SPEC),
            "vocoder": {"is_local": False, "local_path": None},
        }
    }


def vocoder_config(size: str = "tiny") -> dict[str, Any]:
    """A vocos config.yaml (the layout of charactr/vocos-mel-24khz's) with ``size``'s backbone."""
    try:
        backbone = VOCODER_SIZES[size]
    except KeyError:
        raise ValueError(f"vocoder must be one of {sorted(VOCODER_SIZES)}, not {size!r}") from None
    mel = MEL_SPEC
    return {
        "feature_extractor": {
            "class_path": "vocos.feature_extractors.MelSpectrogramFeatures",
            "init_args": {
                "sample_rate": mel["target_sample_rate"],
                "n_fft": mel["n_fft"],
                "hop_length": mel["hop_length"],
                "n_mels": mel["n_mel_channels"],
                "padding": "center",
            },
        },
        "backbone": {
            "class_path": "vocos.models.VocosBackbone",
            "init_args": {"input_channels": mel["n_mel_channels"], **backbone},
        },
        "head": {
            "class_path": "vocos.heads.ISTFTHead",
            "init_args": {
                "dim": backbone["dim"],
                "n_fft": mel["n_fft"],
                "hop_length": mel["hop_length"],
                "padding": "center",
            },
        },
    }


def build_cfm(arch: Mapping[str, Any], vocab_file: Path, backbone: str = "DiT") -> torch.nn.Module:
    """f5-tts's CFM around a DiT (or UNetT), built as f5_tts.infer.utils_infer.load_model builds it."""
    from tts_inference.engine.f5_package import import_f5
    from tts_inference.model_folder import BACKBONES

    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, not {backbone!r}")
    CFM = import_f5("f5_tts.model.cfm").CFM
    backbone_cls = getattr(import_f5(f"f5_tts.model.backbones.{BACKBONES[backbone]}"), backbone)
    get_tokenizer = import_f5("f5_tts.model.utils").get_tokenizer
    vocab_char_map, vocab_size = get_tokenizer(str(vocab_file), "custom")
    mel = MEL_SPEC
    model: torch.nn.Module = CFM(
        transformer=backbone_cls(**arch, text_num_embeds=vocab_size, mel_dim=mel["n_mel_channels"]),
        mel_spec_kwargs={
            "n_fft": mel["n_fft"],
            "hop_length": mel["hop_length"],
            "win_length": mel["win_length"],
            "n_mel_channels": mel["n_mel_channels"],
            "target_sample_rate": mel["target_sample_rate"],
            "mel_spec_type": mel["mel_spec_type"],
        },
        vocab_char_map=vocab_char_map,
    )
    return model


def checkpoint_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint in the published layout: the EMA model's state dict."""
    import torch

    tensors = {EMA_PREFIX + key: value for key, value in model.state_dict().items()}
    tensors["step"] = torch.tensor(CHECKPOINT_STEP, dtype=torch.int64)
    tensors["initted"] = torch.tensor(True)
    return tensors


def _randomise_zeros(module: torch.nn.Module) -> None:
    import torch

    with torch.no_grad():
        for param in module.parameters():
            if param.is_floating_point() and not param.any():
                param.normal_(0.0, _INIT_STD)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_folder(
    folder: Path, *, arch: Mapping[str, Any], name: str, vocoder: str, backbone: str
) -> None:
    import torch
    from safetensors.torch import save_file
    from vocos import Vocos

    vocab_file = packaged_vocab_file()
    shutil.copyfile(vocab_file, folder / VOCAB_NAME)

    model = build_cfm(arch, vocab_file, backbone)
    _randomise_zeros(model)
    tensors = {k: v.detach().contiguous() for k, v in checkpoint_tensors(model).items()}
    save_file(tensors, str(folder / CHECKPOINT_NAME))
    del model, tensors

    vocos_dir = folder / VOCODER_DIR
    vocos_dir.mkdir()
    config_path = vocos_dir / VOCODER_CONFIG_NAME
    config_path.write_text(yaml.safe_dump(vocoder_config(vocoder), sort_keys=False))
    vocos = Vocos.from_hparams(str(config_path))
    torch.save(vocos.state_dict(), vocos_dir / VOCODER_WEIGHTS_NAME)

    # The config goes in last: a folder with a model.yaml has every other file.
    config = model_config(name, arch, backbone)
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))


def make_model(
    out_dir: Path,
    *,
    arch: Mapping[str, Any] = TINY_ARCH,
    name: str | None = None,
    seed: int = 0,
    vocoder: str = "tiny",
    backbone: str = "DiT",
) -> Path:
    """Write a random-weight model folder at ``out_dir`` and return its path.

    The same arguments give the same bytes. ``out_dir`` must not exist or be an
    empty folder; the files are written under a temporary name beside it and the
    folder is renamed into place when complete. ``name`` (model.yaml's) defaults
    to "tiny", or "F5TTS_v1_Base-random" for the full-size architecture.
    """
    import torch

    if name is None:
        name = FULL_NAME if dict(arch) == dict(FULL_ARCH) else "tiny"

    if vocoder not in VOCODER_SIZES:
        raise ValueError(f"vocoder must be one of {sorted(VOCODER_SIZES)}, not {vocoder!r}")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} already exists and is not an empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _write_folder(partial, arch=arch, name=name, vocoder=vocoder, backbone=backbone)
        for path in partial.rglob("*"):
            if path.is_file():
                path.chmod(0o644)
                _fsync(path)
        for path in (partial / VOCODER_DIR, partial):
            path.chmod(0o755)
            _fsync(path)
        # rename(2) replaces an empty folder and fails on a non-empty one, so a racing
        # writer never lands files inside a finished model.
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _fsync(out_dir.parent)
    return out_dir


def folder_size(folder: Path) -> int:
    """Total bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out_dir",
        type=Path,
        metavar="OUT_DIR",
        help="folder to create (must not exist, or be empty)",
    )
    parser.add_argument(
        "--full-size",
        action="store_true",
        help="F5TTS_v1_Base's architecture and the real vocos's, random weights (about 1.4 GB)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help=f'model name in model.yaml (default "tiny", or "{FULL_NAME}")',
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="torch seed; the same seed writes the same bytes"
    )


def run(args: argparse.Namespace) -> int:
    full: bool = args.full_size
    started = time.perf_counter()
    try:
        out = make_model(
            args.out_dir,
            arch=FULL_ARCH if full else TINY_ARCH,
            name=args.name,
            seed=args.seed,
            vocoder="full" if full else "tiny",
        )
    except (FileExistsError, ValueError) as exc:
        print(f"make-tiny-model: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(f"{out}\t{folder_size(out)} bytes\t{seconds:.2f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tts_inference.tiny_model",
        description="write a tiny random-weight F5-TTS model and vocoder (it speaks noise)",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
