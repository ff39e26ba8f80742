"""The parts of f5-tts the engine relies on: fails loudly when an upgrade changes them.

tts_inference.engine.f5 builds the model with f5-tts's lower-level pieces and
mirrors what ``infer_process`` / ``infer_batch_process`` do to a request, so a
new f5-tts can break it without an import error: a renamed keyword, a changed
default, a new checkpoint layout, or a sampler that no longer seeds each item.
Each test below names what the engine depends on; when one fails after an
upgrade, re-read the engine against the new f5-tts before changing the pin.

f5-tts 1.x has a high-level ``f5_tts.api.F5TTS(model="F5TTS_v1_Base")``. The
server deliberately does not use it: it reads the arch from the package's own
configs/<model>.yaml by name (not from the model folder's model.yaml, so the
tiny test model could not load through it) and fetches the checkpoint and the
vocoder from the Hugging Face hub (cached_path("hf://SWivid/...")) unless
given paths, while the server must load only the synced folder and never
download.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import os
import re
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tts_inference import model_folder, tiny_model

PINNED = "1.1.22"


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def _params(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)


def _has(func: Callable[..., Any], *names: str) -> None:
    missing = [name for name in names if name not in _params(func)]
    assert not missing, f"{func.__qualname__} no longer takes {missing}: {inspect.signature(func)}"


def _source(func: Callable[..., Any]) -> str:
    """The function's source with runs of whitespace made one space."""
    return re.sub(r"\s+", " ", inspect.getsource(func))


def test_the_pinned_version() -> None:
    assert version("f5-tts") == PINNED


def test_loader_signatures() -> None:
    from f5_tts.infer import utils_infer
    from f5_tts.model.utils import get_tokenizer

    # load_checkpoint(model, str(path), device, dtype=..., use_ema=True)
    _has(utils_infer.load_checkpoint, "model", "ckpt_path", "device", "dtype", "use_ema")
    assert _params(utils_infer.load_checkpoint)["dtype"].default is None
    # load_vocoder(vocoder_name="vocos", is_local=True, local_path=str(dir), device=device)
    _has(utils_infer.load_vocoder, "vocoder_name", "is_local", "local_path", "device")
    # get_tokenizer(str(vocab), "custom"): a path to a vocab.txt
    assert list(_params(get_tokenizer))[:2] == ["dataset_name", "tokenizer"]
    assert '"custom"' in _source(get_tokenizer)
    # load_model is what the engine mirrors (and test_tiny_model uses).
    _has(
        utils_infer.load_model,
        "model_cls",
        "model_cfg",
        "ckpt_path",
        "mel_spec_type",
        "vocab_file",
        "device",
    )


def test_load_checkpoint_reads_the_ema_layout() -> None:
    """The engine relies on load_checkpoint taking "ema_model.*" keys and dropping step/initted."""
    from f5_tts.infer import utils_infer

    src = _source(utils_infer.load_checkpoint)
    assert 'k.replace("ema_model.", "")' in src
    assert 'if k not in ["initted", "step"]' in src
    assert "model = model.to(dtype)" in src
    assert "load_file(ckpt_path, device=device)" in src


def test_model_classes() -> None:
    from f5_tts.model import CFM, DiT
    from f5_tts.model.modules import AttnProcessor, DiTBlock, MelSpec

    _has(CFM.__init__, "transformer", "mel_spec_kwargs", "odeint_kwargs", "vocab_char_map")
    _has(DiT.__init__, *tiny_model.FULL_ARCH, "text_num_embeds", "mel_dim")
    _has(DiTBlock.__init__, "attn_backend", "attn_mask_enabled")
    _has(AttnProcessor.__init__, "attn_backend", "attn_mask_enabled")
    _has(
        MelSpec.__init__,
        "n_fft",
        "hop_length",
        "win_length",
        "n_mel_channels",
        "target_sample_rate",
        "mel_spec_type",
    )
    # The engine reads model.mel_spec.hop_length and calls model.mel_spec(wave).
    assert "self.hop_length = hop_length" in _source(MelSpec.__init__)


def test_cfm_sample_signature() -> None:
    from f5_tts.model import CFM

    _has(
        CFM.sample,
        "cond",
        "text",
        "duration",
        "lens",
        "steps",
        "cfg_strength",
        "sway_sampling_coef",
        "seed",
    )
    assert _params(CFM.sample)["max_duration"].default == 65536  # engine.f5.MAX_DURATION


def test_cfm_sample_seeds_each_item_and_masks_batches() -> None:
    """engine.f5._SeedPerItem relies on this loop: one torch.manual_seed(seed) per item, in order."""
    from f5_tts.model import CFM

    src = _source(CFM.sample)
    assert re.search(
        r"for dur in duration: if exists\(seed\): torch\.manual_seed\(seed\) "
        r"y0\.append\(torch\.randn\(dur, ",
        src,
    ), "CFM.sample no longer draws each item's noise after torch.manual_seed(seed)"
    assert src.count("manual_seed") == 1
    assert "if batch > 1: mask = lens_to_mask(duration)" in src
    # The floor engine.f5 applies to durations itself, so it knows where each item ends.
    assert (
        "duration = torch.maximum( torch.maximum((text != -1).sum(dim=-1), lens) + 1, duration )"
        in src
    )
    assert "cond = self.mel_spec(cond) cond = cond.permute(0, 2, 1)" in src


def test_the_sampler_and_attention_look_up_what_nosync_replaces() -> None:
    """engine.nosync replaces two module globals: the ODE solver CFM.sample calls and
    flash_attn's unpad_input, which the attention calls three times with one mask."""
    from f5_tts.model import CFM, cfm, modules

    src = _source(CFM.sample)
    assert "trajectory = odeint(fn, y0, t, **self.odeint_kwargs)" in src
    assert "sampled = trajectory[-1]" in src
    assert cfm.odeint.__module__ in ("torchdiffeq._impl.odeint", "tts_inference.engine.nosync")
    attention = _source(modules.AttnProcessor.__call__)
    for tensor in ("query", "key", "value"):
        assert f"unpad_input({tensor}, mask)" in attention


def test_infer_batch_process_preparation() -> None:
    """What engine.f5 mirrors from infer_batch_process and infer_process."""
    from f5_tts.infer import utils_infer

    assert utils_infer.target_rms == 0.1  # engine.f5.TARGET_RMS
    assert _params(utils_infer.infer_batch_process)["target_rms"].default == 0.1
    _has(
        utils_infer.infer_batch_process,
        "ref_audio", "ref_text", "gen_text_batches", "model_obj", "vocoder",
        "nfe_step", "cfg_strength", "sway_sampling_coef", "speed", "device", "progress",
    )  # fmt: skip
    src = _source(utils_infer.infer_batch_process)
    for line in (
        "if rms < target_rms: audio = audio * target_rms / rms",
        'if len(ref_text[-1].encode("utf-8")) == 1: ref_text = ref_text + " "',
        'if len(gen_text.encode("utf-8")) < 10: local_speed = 0.3',
        "text_list = [ref_text + gen_text] final_text_list = convert_char_to_pinyin(text_list)",
        "ref_audio_len = audio.shape[-1] // hop_length",
        "duration = ref_audio_len + int(ref_audio_len / ref_text_len * gen_text_len / local_speed)",
        "generated = generated[:, ref_audio_len:, :]",
        "generated_wave = vocoder.decode(generated)",
        "generated_wave = generated_wave * rms / target_rms",
    ):
        assert line in src, line
    # split_text's budget, and chunk_text(text, max_chars).
    assert (
        'max_chars = int(len(ref_text.encode("utf-8")) / (audio.shape[-1] / sr) * (22 - audio.shape[-1] / sr) * speed)'
        in _source(utils_infer.infer_process)
    )
    assert list(_params(utils_infer.chunk_text)) == ["text", "max_chars"]
    # engine.f5.reference_text: how preprocess_ref_audio_text ends a transcript.
    src = _source(utils_infer.preprocess_ref_audio_text)
    assert 'if not ref_text.endswith(". ") and not ref_text.endswith("。"):' in src
    assert 'ref_text += " " else: ref_text += ". "' in src


def test_vocoder_and_text_helpers() -> None:
    from f5_tts.model.utils import convert_char_to_pinyin
    from vocos import Vocos

    _has(Vocos.decode, "features_input")
    _has(convert_char_to_pinyin, "text_list")
    assert convert_char_to_pinyin(["Hi there."]) == [list("Hi there.")]


def test_f5tts_api_exists_but_downloads() -> None:
    """The high-level API the server deliberately does not use (see the module docstring)."""
    from f5_tts.api import F5TTS

    assert _params(F5TTS.__init__)["model"].default == "F5TTS_v1_Base"
    src = _source(F5TTS.__init__)
    assert "configs/{model}.yaml" in src
    assert "cached_path(" in src


@pytest.mark.parametrize("name", list(model_folder.KNOWN_MODELS))
def test_known_models_are_what_f5tts_downloads_by_name(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model_folder.KNOWN_MODELS: the checkpoint F5TTS(model=name) fetches, and the config it reads.

    publish writes a hub folder's model.yaml from these; if f5-tts renames a
    checkpoint or moves its configs, a published folder would no longer match.
    """
    from importlib.resources import files

    from f5_tts import api
    from f5_tts.infer import utils_infer

    asked: list[str] = []

    class Fetched(Exception):
        pass

    def cached_path(url: str, **kwargs: Any) -> str:
        asked.append(url)
        raise Fetched

    monkeypatch.setattr(api, "cached_path", cached_path)
    monkeypatch.setattr(api, "load_vocoder", lambda *args, **kwargs: None)
    with pytest.raises(Fetched):
        api.F5TTS(model=name, device="cpu")
    known = model_folder.KNOWN_MODELS[name]
    assert asked == [f"{known.hub_folder}/{known.checkpoint}"]
    # The config F5TTS reads by name is the file publish reads without importing f5_tts.
    packaged = Path(str(files("f5_tts").joinpath(f"configs/{name}.yaml")))
    assert model_folder.packaged_config_file(name) == packaged
    # And the vocab load_model falls back to is the one publish adds where a folder has none.
    assert '"infer/examples/vocab.txt"' in _source(utils_infer.load_model)
    assert model_folder.packaged_vocab_file() == Path(
        str(files("f5_tts").joinpath("infer/examples/vocab.txt"))
    )


def test_unett_takes_what_the_engine_passes() -> None:
    """E2TTS_Base is a UNetT: the engine passes it attn_backend and attn_mask_enabled and
    hooks each layer's attention (layers[i] = [skip_proj, attn_norm, attn, ff_norm, ff])."""
    from f5_tts.model.backbones.unett import UNetT

    _has(UNetT.__init__, "attn_backend", "attn_mask_enabled", "text_num_embeds", "mel_dim")
    assert "nn.ModuleList( [ skip_proj, attn_norm, attn, ff_norm, ff," in _source(UNetT.__init__)


#: sha256 of "name shape" lines of the F5TTS_v1_Base checkpoint layout (f5-tts 1.1.22).
LAYOUT_SHA256 = "b78e78b4c3fc10988569885ceeb87f8ee549b3900b2721daf955eaa75d987a8a"


def test_checkpoint_key_layout() -> None:
    """The published model_1250000.safetensors layout: the engine's CFM(DiT) must keep taking it."""
    import torch
    from f5_tts.model import CFM

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with torch.device("meta"):
        model: CFM = tiny_model.build_cfm(tiny_model.FULL_ARCH, model_folder.packaged_vocab_file())
    tensors = tiny_model.checkpoint_tensors(model)
    # load_checkpoint's own mapping: strip "ema_model.", drop the EMA bookkeeping.
    expected = {k.replace("ema_model.", "") for k in tensors if k not in tiny_model.EMA_BOOKKEEPING}
    assert expected == set(model.state_dict())
    assert len(tensors) == 366
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(tensors.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == LAYOUT_SHA256, (
        "f5-tts's DiT/CFM changed its state dict: published F5TTS_v1_Base checkpoints may not load"
    )


def test_the_model_package_exports() -> None:
    """engine.f5_package.EXPORTS: what f5_tts/model/__init__.py binds, and from where.

    The engine never runs that __init__.py (its Trainer imports wandb and datasets);
    the package object it registers instead resolves these names on demand.
    """
    from tts_inference.engine.f5_package import EXPORTS

    spec = importlib.util.find_spec("f5_tts.model")
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    bound: dict[str, str] = {}
    exported: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.module is not None
            assert node.module.startswith("f5_tts.model."), ast.unparse(node)
            for alias in node.names:
                bound[alias.asname or alias.name] = node.module.removeprefix("f5_tts.model.")
        elif isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__":
            exported = ast.literal_eval(node.value)
        else:
            raise AssertionError(f"f5_tts/model/__init__.py now also runs {ast.unparse(node)!r}")
    assert bound == EXPORTS
    assert sorted(exported) == sorted(EXPORTS)
