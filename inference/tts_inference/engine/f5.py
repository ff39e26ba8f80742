"""F5-TTS on one device, batched: the engine the server runs.

The model is built from the model folder's own ``model.yaml`` (read, and every
file found, by ``tts_inference.model_folder``) with f5-tts's own lower-level
pieces (``DiT`` or ``UNetT``, ``CFM``, ``get_tokenizer``, ``load_checkpoint``,
``load_vocoder``), from local files only. ``f5_tts.api.F5TTS`` is not used: it
reads the arch from the package's config by name and downloads from the hub
(publish writes that packaged config into the folder's model.yaml instead).

A batch runs one ``CFM.sample`` call per (nfe_step, cfg_strength,
sway_sampling_coef) group, with per-item reference lengths, durations and noise
seeds, so a request's audio does not depend on what it is batched with:

- ``attn_mask_enabled`` is switched on at load. It only decides whether the
  DiT's self-attention ignores the padded frames of shorter items; the weights
  are the same. The rest of the DiT already masks padding whenever
  ``CFM.sample`` passes a mask (it does for batches of two or more): the text
  embedding is cut per item, the convolutional position embedding and the
  attention output zero the padded frames, and ``text_mask_padding`` (in the
  arch of every F5-TTS v1 model) keeps the text convolutions off filler tokens.
- Each reference mel is computed alone (the STFT's reflect padding would
  otherwise see the zeros of the batch padding) and passed with ``lens``.
- Each item gets the noise of its own seed (see ``_SeedPerItem``).
- The generated mels are decoded in one pass of vocos' backbone, with the
  padded frames zeroed before each convolution, so each sees what it sees
  alone (``engine/vocos_batch.py``).

On a CPU, batching buys nothing (the matrix products already keep the cores
busy), so the queue may run two batches at once on the one model instead, each
in its own thread (``concurrent_batches``). The DiT keeps its text cache per
thread (f5-tts made it thread-local); the one thing threads share is torch's
global generator, which ``CFM.sample`` seeds and then draws from, so the draw is
done under a lock (``_NoiseLock``). Each DiT block sets its thread's share of
the cores: a batch running alone gets them all.

The ODE loop is f5-tts's Euler without torchdiffeq's host syncs, and flash_attn
unpads a batch once an ODE step instead of three times a block (``engine/nosync.py``).

Everything else (rms normalisation, text, duration, trimming) mirrors
``f5_tts.infer.utils_infer.infer_process`` and ``infer_batch_process`` of
f5-tts 1.1.22, the pinned version; tests/inference/test_f5_contract.py fails
when the functions used here change.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import os
import secrets
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

# The server never downloads: set before f5_tts (and through it huggingface_hub and
# transformers) is imported, so a slip in a loader fails instead of reaching a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from tts_inference.engine import cpu, nosync, vocos_batch
from tts_inference.engine.base import (
    SAMPLE_RATE,
    Audio,
    Engine,
    SynthesisParams,
    SynthesisRequest,
    Voice,
)
from tts_inference.engine.f5_package import import_f5
from tts_inference.model_folder import BACKBONES as BACKBONE_MODULES
from tts_inference.model_folder import ModelFolderError, open_folder
from tts_inference.text import MIN_BUDGET, size

# f5-tts's own modules, imported without f5_tts/model/__init__.py (its Trainer pulls in
# wandb and datasets, which the inference image leaves out): see engine/f5_package.py.
utils_infer = import_f5("f5_tts.infer.utils_infer")
f5_utils = import_f5("f5_tts.model.utils")
cfm_module = import_f5("f5_tts.model.cfm")
CFM = cfm_module.CFM

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
ATTN_BACKENDS = ("torch", "flash_attn")
#: The backbones model.yaml may name: f5-tts's own classes.
BACKBONES: dict[str, Any] = {
    name: getattr(import_f5(f"f5_tts.model.backbones.{module}"), name)
    for name, module in BACKBONE_MODULES.items()
}
DiT = BACKBONES["DiT"]

#: infer_batch_process's loudness target: quieter references are scaled up to it and back.
TARGET_RMS = 0.1
#: infer_process sizes chunks so that reference + chunk last about this many seconds.
MAX_SECONDS = 22
#: infer_batch_process speaks texts shorter than this many UTF-8 bytes at speed 0.3.
SHORT_TEXT_BYTES = 10
SHORT_TEXT_SPEED = 0.3
#: CFM.sample's default cap on a sequence's frames.
MAX_DURATION = 65536
#: Audio samples per mel frame until a model's config says otherwise (every F5-TTS config).
DEFAULT_HOP_LENGTH = 256
#: convert_char_to_pinyin makes at most this many text tokens per UTF-8 byte (a space
#: before each multi-letter word or Chinese syllable).
TOKENS_PER_BYTE = 2
#: CFM's sampler as load_model builds it.
ODE_METHOD = "euler"

# AttnProcessor warns that masks with the torch backend use more GPU memory; batching
# needs the mask, and flash_attn is used instead wherever it is installed.
_MASK_WARNING = "attn_mask_enabled=True with attn_backend='torch'"


log = logging.getLogger("tts_inference.engine.f5")


class EngineError(RuntimeError):
    """The model cannot be loaded or run (a missing file, a bad config, no model loaded)."""


def _blocks(transformer: Any) -> list[Any]:
    """The backbone's transformer blocks: DiT's transformer_blocks, or each UNetT layer's attention."""
    if hasattr(transformer, "transformer_blocks"):
        return list(transformer.transformer_blocks)
    # UNetT.layers: ModuleList([skip_proj, attn_norm, attn, ff_norm, ff]) per layer.
    return [layer[2] for layer in transformer.layers]


def reference_text(text: str) -> str:
    """The reference transcript as preprocess_ref_audio_text leaves it: ending in ". " or "。"."""
    if not text.endswith(". ") and not text.endswith("。"):
        text += " " if text.endswith(".") else ". "
    return text


class _NoiseLock:
    """Keeps two threads' seed-then-draw of the initial noise from interleaving.

    CFM.sample seeds torch's one global generator (``torch.manual_seed``) and draws
    each item's noise from it before its first transformer call. The lock is taken
    at the first seed (``_SeedPerItem.__int__``) and let go at that thread's first
    transformer call or when sample ends, whichever comes first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    def acquire(self) -> None:
        if not getattr(self._local, "held", False):
            self._lock.acquire()
            self._local.held = True

    def release(self) -> None:
        if getattr(self._local, "held", False):
            self._local.held = False
            self._lock.release()


class _SeedPerItem:
    """A seed for CFM.sample that gives each item of a batch its own seed, in order.

    CFM.sample draws the initial noise item by item, each with the whole batch's one
    seed: ``for dur in duration: torch.manual_seed(seed); y0.append(torch.randn(dur, ...))``.
    It takes no noise or generator from the caller. torch.manual_seed reads the seed
    with ``int(seed)``, once per call, so this object, whose ``__int__`` returns the
    next item's seed, makes item i's noise exactly the noise it gets alone (the first
    ``dur_i`` rows drawn after seeding with its own seed), with sample's code unchanged.
    ``check`` makes sure sample consumed exactly one seed per item; the contract test
    pins the loop's source.
    """

    def __init__(self, seeds: Iterable[int], noise_lock: _NoiseLock) -> None:
        self._seeds = list(seeds)
        self._used = 0
        self._noise_lock = noise_lock

    def __int__(self) -> int:
        if self._used >= len(self._seeds):
            raise EngineError("CFM.sample asked for more seeds than the batch has items")
        self._noise_lock.acquire()
        seed = self._seeds[self._used]
        self._used += 1
        return seed

    def check(self) -> None:
        if self._used != len(self._seeds):
            raise EngineError(
                f"CFM.sample seeded {self._used} times for {len(self._seeds)} items: "
                "f5-tts no longer seeds each item's noise; per-request seeds would be wrong"
            )


@dataclass(frozen=True)
class _Item:
    """One request, prepared as infer_batch_process prepares it."""

    cond: torch.Tensor  # (frames, n_mels) reference mel
    ref_frames: int  # infer_batch_process's ref_audio_len: samples // hop_length
    text: list[str]  # ref_text + " " + gen_text as tokens
    duration: int  # total frames, as CFM.sample will settle them
    seed: int
    rms: torch.Tensor  # the reference's rms before normalisation


def _resolve_device(device: str | None) -> str:
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise EngineError(f"unknown device {name!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"device {name!r} asked for, but CUDA is not available")
        index = torch.cuda.current_device() if resolved.index is None else resolved.index
        return f"cuda:{index}"
    return str(resolved)


def _flash_attn_problem() -> str | None:
    """Why flash_attn cannot be used here, or None when it imports."""
    if importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not installed"
    try:
        importlib.import_module("flash_attn")
    except Exception as exc:  # any failure to import is reported, never swallowed
        return f"flash_attn is installed but does not import: {type(exc).__name__}: {exc}"
    return None


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        # As f5-tts's load_checkpoint picks: float16 on CUDA from compute capability 7.
        if device.startswith("cuda") and torch.cuda.get_device_properties(device).major >= 7:
            return torch.float16
        return torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise EngineError(
            f"dtype must be auto, int8 (CPU) or one of {', '.join(DTYPES)}, not {dtype!r}"
        ) from None


def _resolve_attn_backend(attn_backend: str, device: str) -> tuple[str, str | None]:
    """The attention backend, and why it is torch's where flash_attn was wanted but failed."""
    on_cuda = device.startswith("cuda")
    if attn_backend == "auto":
        if not on_cuda:
            return "torch", None
        problem = _flash_attn_problem()
        if problem is None:
            return "flash_attn", None
        if "does not import" in problem:
            log.warning("%s; using torch's attention instead", problem)
            return "torch", problem
        return "torch", None
    if attn_backend not in ATTN_BACKENDS:
        raise EngineError(
            f"attn_backend must be auto or one of {', '.join(ATTN_BACKENDS)}, not {attn_backend!r}"
        )
    if attn_backend == "flash_attn":
        if not on_cuda:
            raise EngineError(f"attn_backend flash_attn needs a CUDA device, not {device}")
        if problem := _flash_attn_problem():
            raise EngineError(f"attn_backend flash_attn asked for, but {problem}")
    return attn_backend, None


class F5Engine(Engine):
    """F5-TTS (a DiT in a CFM, and a vocos vocoder) loaded from a model folder."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str | None = None,
        dtype: str = "auto",
        attn_backend: str = "auto",
        max_batch: int | None = None,
        concurrent_batches: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self._device = _resolve_device(device)
        on_cpu = self._device.startswith("cpu")
        # A batch of n costs about n single passes on a CPU: batching is for GPUs.
        if max_batch is None:
            max_batch = 1 if on_cpu else 8
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.max_batch = max_batch
        # The cores the batches running at once share (torch's intra-op threads).
        self._threads = torch.get_num_threads()
        #: On a CPU: the dtype and batches at once the machine's features chose (engine/cpu.py).
        self.cpu_plan: cpu.CpuPlan | None = None
        if on_cpu:
            self.cpu_plan = cpu.plan(
                dtype,
                concurrent_batches,
                quantized_engines=torch.backends.quantized.supported_engines,
            )
            dtype = self.cpu_plan.dtype
            concurrent_batches = self.cpu_plan.concurrent_batches
        elif concurrent_batches is None:
            concurrent_batches = 1
        if concurrent_batches < 1:
            raise ValueError(f"concurrent_batches must be at least 1, not {concurrent_batches}")
        if concurrent_batches > 1 and not on_cpu:
            raise EngineError(
                f"concurrent batches are for a CPU; on {self._device} one batch runs at a "
                "time (raise max_batch instead)"
            )
        self.concurrent_batches = concurrent_batches
        self._running = 0
        self._running_lock = threading.Lock()
        self._noise_lock = _NoiseLock()
        # int8: dynamic int8 quantization of the transformer's Linear layers on CPU
        # (2x float32's speed there on AVX2, 1.6x for a whole request). Its activation
        # scales are computed per input tensor, so a batch holds one request in that
        # mode: a batch could otherwise change a request's audio.
        self._quantize = dtype == "int8"
        if self._quantize and not self._device.startswith("cpu"):
            raise EngineError(f"dtype int8 is for CPU; on {self._device} use float16 or bfloat16")
        self._dtype = _resolve_dtype("float32" if self._quantize else dtype, self._device)
        self._attn_backend, self._attn_fallback = _resolve_attn_backend(attn_backend, self._device)
        # Tests switch this off before load() to show what masking prevents.
        self._attn_mask_enabled = True
        self._config: dict[str, Any] | None = None
        self._model: Any = None
        self._vocoder: Any = None
        #: The model's parameters as loaded (int8 packs the Linear weights out of parameters()).
        self._parameters = 0
        # What one sampling run can take, read from the model at load: mel frames per
        # item (the text embedding's positions) and audio samples per frame.
        self._max_frames = MAX_DURATION
        self._hop_length = DEFAULT_HOP_LENGTH

    @property
    def device(self) -> str:
        return self._device

    # loading

    def load(self) -> None:
        """Build the model from model.yaml and load its weights, all from the folder."""
        if self._model is not None:
            return
        # Every file is checked before anything is built, and each loader below gets a local path.
        try:
            files = open_folder(self.model_dir)
        except (OSError, ModelFolderError) as exc:
            raise EngineError(str(exc)) from None
        config = files.config
        mel = config["mel_spec"]
        vocoder_name = config["vocoder"]["name"]
        if config["backbone"] not in BACKBONES:
            raise EngineError(
                f"backbone {config['backbone']!r} is not supported (only {', '.join(BACKBONES)})"
            )
        if vocoder_name != "vocos" or mel.get("mel_spec_type", "vocos") != "vocos":
            raise EngineError(f"vocoder {vocoder_name!r} is not supported (only vocos)")
        if mel["target_sample_rate"] != SAMPLE_RATE:
            raise EngineError(f"sample rate {mel['target_sample_rate']} is not {SAMPLE_RATE}")
        checkpoint, vocab, vocoder_dir = files.checkpoint, files.vocab, files.vocoder_dir
        # The sampler's ODE loop and flash_attn's unpadding without a host sync each step.
        nosync.install(cfm_module, import_f5("f5_tts.model.modules"))

        arch = {
            **config["arch"],
            "attn_backend": self._attn_backend,
            "attn_mask_enabled": self._attn_mask_enabled,
        }
        # As utils_infer.load_model builds it, but load_checkpoint gets the dtype explicitly
        # (load_model lets it pick float16 on any CUDA device).
        vocab_char_map, vocab_size = f5_utils.get_tokenizer(str(vocab), "custom")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_MASK_WARNING)
            transformer = BACKBONES[config["backbone"]](
                **arch, text_num_embeds=vocab_size, mel_dim=mel["n_mel_channels"]
            )
        model = CFM(
            transformer=transformer,
            mel_spec_kwargs={
                "n_fft": mel["n_fft"],
                "hop_length": mel["hop_length"],
                "win_length": mel["win_length"],
                "n_mel_channels": mel["n_mel_channels"],
                "target_sample_rate": mel["target_sample_rate"],
                "mel_spec_type": mel["mel_spec_type"],
            },
            odeint_kwargs={"method": ODE_METHOD},
            vocab_char_map=vocab_char_map,
        )
        try:
            model = utils_infer.load_checkpoint(
                model, str(checkpoint), self._device, dtype=self._dtype, use_ema=True
            )
        except Exception as exc:
            raise EngineError(f"{checkpoint}: cannot load the checkpoint: {exc}") from exc
        try:
            vocoder = utils_infer.load_vocoder(
                vocoder_name="vocos",
                is_local=True,
                local_path=str(vocoder_dir),
                device=self._device,
            )
            vocos_batch.check(vocoder)
        except Exception as exc:
            raise EngineError(f"{vocoder_dir}: cannot load the vocoder: {exc}") from exc
        self._parameters = sum(p.numel() for p in model.parameters())
        if self._quantize:
            # oneDNN's int8 kernels are the fastest of torch's on x86 (bench/cpu_bench.py).
            if "onednn" in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = "onednn"
            model.transformer = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                model.transformer, {torch.nn.Linear}, dtype=torch.qint8
            )
        model.transformer.register_forward_pre_hook(self._on_step)
        if self.concurrent_batches > 1:
            # Each block re-takes its share, so a batch that started alone gives up a core
            # within a block (not a whole step) of another starting: never more threads
            # than cores for long.
            for block in _blocks(model.transformer):
                block.register_forward_pre_hook(self._on_block)
        if self.cpu_plan is not None:
            log.info(
                "CPU: dtype %s, %d batch(es) at once, %d thread(s): %s",
                self.cpu_plan.dtype,
                self.concurrent_batches,
                self._threads,
                self.cpu_plan.why,
            )
        self._config = config
        self._hop_length = int(mel["hop_length"])
        self._max_frames = min(
            MAX_DURATION, int(getattr(transformer.text_embed, "precompute_max_pos", MAX_DURATION))
        )
        self._model = model.eval()
        self._vocoder = vocoder

    def unload(self) -> None:
        self._model = None
        self._vocoder = None
        gc.collect()
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()

    def info(self) -> dict[str, Any]:
        config = self._config or {}
        params = None if self._model is None else self._parameters
        return {
            "device": self.device,
            "model": config.get("name", self.model_dir.name),
            "model_dir": str(self.model_dir),
            "dtype": "int8" if self._quantize else str(self._dtype).removeprefix("torch."),
            "attn_backend": self._attn_backend,
            # Set when flash_attn is installed but failed to import: torch's attention runs.
            "attn_fallback": self._attn_fallback or "",
            "attn_mask": self._attn_mask_enabled,
            "parameters": params,
            "max_batch": self.max_batch,
            "concurrent_batches": self.concurrent_batches,
            # Why a CPU runs this dtype and these batches (engine/cpu.py's reasons).
            "cpu_choice": self.cpu_plan.reason if self.cpu_plan is not None else "",
            "f5_tts": _f5_version(),
        }

    # synthesis

    def chunk_budget(self, voice: Voice, params: SynthesisParams) -> int:
        """infer_process's budget (reference + chunk last about 22 s at the reference's pace),
        capped by what one run can take: the text embedding's positions bound both a chunk's
        frames (reference included) and its text tokens, so no text can overrun them.
        """
        ref_text = reference_text(voice.text)
        ref_bytes = size(ref_text)
        seconds = len(voice.audio) / SAMPLE_RATE
        if seconds <= 0:
            raise ValueError(f"voice {voice.name!r} has no reference audio")
        speed = params.speed
        quality = int(ref_bytes / seconds * (MAX_SECONDS - seconds) * speed)
        ref_frames = max(1, len(voice.audio) // self._hop_length)
        room = self._max_frames - ref_frames - 1
        frames = int(room * ref_bytes / ref_frames * speed)
        tokens = (room - TOKENS_PER_BYTE * ref_bytes) // TOKENS_PER_BYTE
        return max(MIN_BUDGET, min(quality, frames, tokens))

    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> list[Audio]:
        if not requests:
            return []
        if self._model is None:
            raise EngineError("the model is not loaded: call load() first")
        # One sample() per sampler setting; speed only changes a duration, so it batches.
        groups: dict[tuple[int, float, float], list[int]] = {}
        for index, request in enumerate(requests):
            p = request.params
            groups.setdefault((p.nfe_step, p.cfg_strength, p.sway_sampling_coef), []).append(index)
        out: dict[int, Audio] = {}
        size = 1 if self._quantize else self.max_batch
        with torch.inference_mode():
            for (steps, cfg_strength, sway), indices in groups.items():
                for start in range(0, len(indices), size):
                    chunk = indices[start : start + size]
                    waves = self._sample(
                        [requests[i] for i in chunk],
                        steps=steps,
                        cfg_strength=cfg_strength,
                        sway_sampling_coef=sway,
                    )
                    out.update(zip(chunk, waves, strict=True))
        return [out[i] for i in range(len(requests))]

    def _prepare(self, request: SynthesisRequest, hop_length: int) -> _Item:
        """infer_batch_process's preparation of one request, with its mel computed alone."""
        voice, gen_text = request.voice, request.text
        if voice.audio.ndim != 1 or voice.audio.size == 0:
            raise ValueError(
                f"voice {voice.name!r}: expected mono audio, got shape {voice.audio.shape}"
            )
        if not voice.text.strip():
            raise ValueError(f"voice {voice.name!r} has no reference text")
        audio = torch.from_numpy(np.ascontiguousarray(voice.audio, dtype=np.float32)).unsqueeze(0)
        rms = torch.sqrt(torch.mean(torch.square(audio)))
        if not rms > 0:
            raise ValueError(f"voice {voice.name!r}: the reference audio is silent")
        if rms < TARGET_RMS:
            audio = audio * TARGET_RMS / rms
        audio = audio.to(self._device)

        ref_text = reference_text(voice.text)
        if len(ref_text[-1].encode("utf-8")) == 1:
            ref_text = ref_text + " "
        speed = request.params.speed
        if not speed > 0:
            raise ValueError(f"speed must be positive, not {speed}")
        if len(gen_text.encode("utf-8")) < SHORT_TEXT_BYTES:
            speed = SHORT_TEXT_SPEED
        text: list[str] = f5_utils.convert_char_to_pinyin([ref_text + gen_text])[0]

        ref_frames = audio.shape[-1] // hop_length
        ref_text_len = len(ref_text.encode("utf-8"))
        gen_text_len = len(gen_text.encode("utf-8"))
        duration = ref_frames + int(ref_frames / ref_text_len * gen_text_len / speed)

        # What CFM.sample does to a raw-wave cond, one item at a time: (1, nw) -> (frames, n_mels).
        cond = self._model.mel_spec(audio)[0].permute(1, 0)
        frames = cond.shape[0]
        # CFM.sample's own floor and cap, so the caller knows where each item ends.
        duration = min(max(max(len(text), frames) + 1, duration), MAX_DURATION)
        seed = request.params.seed
        return _Item(
            cond=cond,
            ref_frames=ref_frames,
            text=text,
            duration=duration,
            seed=secrets.randbits(63) if seed is None else seed,
            rms=rms,
        )

    def _on_step(self, module: Any, args: Any) -> None:
        """Before each transformer call: this thread's noise is drawn."""
        self._noise_lock.release()

    def _on_block(self, module: Any, args: Any) -> None:
        """Before each DiT block: take this thread's share of the cores."""
        self._fit_threads()

    def _fit_threads(self) -> None:
        if self.concurrent_batches > 1:
            share = max(1, self._threads // max(1, self._running))
            if torch.get_num_threads() != share:
                torch.set_num_threads(share)

    def _sample(
        self,
        requests: Sequence[SynthesisRequest],
        *,
        steps: int,
        cfg_strength: float,
        sway_sampling_coef: float,
    ) -> list[Audio]:
        with self._running_lock:
            self._running += 1
        try:
            self._fit_threads()
            return self._sample_running(
                requests,
                steps=steps,
                cfg_strength=cfg_strength,
                sway_sampling_coef=sway_sampling_coef,
            )
        finally:
            self._noise_lock.release()
            with self._running_lock:
                self._running -= 1

    def _sample_running(
        self,
        requests: Sequence[SynthesisRequest],
        *,
        steps: int,
        cfg_strength: float,
        sway_sampling_coef: float,
    ) -> list[Audio]:
        hop_length: int = self._model.mel_spec.hop_length
        items = [self._prepare(r, hop_length) for r in requests]
        device = self._device
        seeds = _SeedPerItem((item.seed for item in items), self._noise_lock)
        generated, trajectory = self._model.sample(
            cond=pad_sequence([item.cond for item in items], batch_first=True),
            text=[item.text for item in items],
            duration=torch.tensor([item.duration for item in items], device=device),
            lens=torch.tensor([item.cond.shape[0] for item in items], device=device),
            steps=steps,
            cfg_strength=cfg_strength,
            sway_sampling_coef=sway_sampling_coef,
            seed=seeds,
        )
        del trajectory
        seeds.check()
        generated = generated.to(torch.float32)
        # The generated part only (infer_batch_process drops the first ref_audio_len
        # frames), up to each item's own duration; decoded as if alone, in one pass.
        mels = [
            row[item.ref_frames : item.duration].permute(1, 0)
            for row, item in zip(generated, items, strict=True)
        ]
        waves: list[Audio] = []
        for decoded, item in zip(vocos_batch.decode(self._vocoder, mels), items, strict=True):
            wave = decoded
            if item.rms < TARGET_RMS:
                wave = wave * item.rms.to(wave.device) / TARGET_RMS
            waves.append(wave.cpu().numpy().astype(np.float32, copy=False))
        return waves


def _f5_version() -> str:
    try:
        return version("f5-tts")
    except PackageNotFoundError:  # pragma: no cover - installed with the inference extra
        return "unknown"
