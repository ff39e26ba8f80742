"""F5Engine on the tiny random model (CPU), and the FakeEngine test double.

The tiny model speaks noise; these tests check the engine's loading, its F5-TTS
preparation (against f5-tts's own infer_batch_process) and that batching never
changes a seeded request's audio.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tts_inference.engine.base import (
    SAMPLE_RATE,
    Audio,
    SynthesisParams,
    SynthesisRequest,
    Voice,
)
from tts_inference.engine.fake import FakeEngine, FakeEngineFailure

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
HOP = 256
REF_TEXT = "This is the reference voice."
# As f5-tts prepares it: preprocess_ref_audio_text adds ". ", infer_batch_process one more space.
PREPARED_REF_TEXT = REF_TEXT + "  "
SHORT = "Short one."
MIDDLE = "Hello from a tiny random model on Kubernetes."
LONG = (
    "A much longer text, that goes on and on for a while, so that its duration is clearly "
    "longer than the others in the batch."
)


def _reference_audio(seconds: float = 1.5) -> Audio:
    """A voiced-looking reference, quiet (rms below 0.1) so the rms normalisation runs."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    signal = sum(0.04 / k * np.sin(2 * math.pi * 150 * k * t) for k in range(1, 5))
    return (signal + 0.002 * rng.standard_normal(t.shape)).astype(np.float32)


VOICE = Voice("test", _reference_audio(), REF_TEXT)


def _request(
    text: str, seed: int | None, nfe_step: int = 4, speed: float = 1.0
) -> SynthesisRequest:
    return SynthesisRequest(text, VOICE, SynthesisParams(speed=speed, nfe_step=nfe_step, seed=seed))


def _expected_frames(text: str, speed: float = 1.0) -> int:
    """infer_batch_process's duration formula, minus the reference: the frames generated."""
    ref_frames = len(VOICE.audio) // HOP
    if len(text.encode("utf-8")) < 10:
        speed = 0.3
    ref_bytes = len(PREPARED_REF_TEXT.encode("utf-8"))
    return int(ref_frames / ref_bytes * len(text.encode("utf-8")) / speed)


def _max_diff(a: Audio, b: Audio) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


# FakeEngine: no torch, no model.


def test_fake_engine_counts_and_speaks_deterministically() -> None:
    engine = FakeEngine()
    engine.load()
    requests = [_request("one", 1), _request("a longer text", None, speed=2.0)]
    first = engine.synthesize_batch(requests)
    second = engine.synthesize_batch(requests[:1])
    assert (engine.loads, engine.calls, engine.batches) == (1, 2, [2, 1])
    assert [len(a) for a in first] == [
        FakeEngine.samples_for("one"),
        FakeEngine.samples_for("a longer text", 2.0),
    ]
    assert all(a.dtype == np.float32 for a in first)
    assert np.array_equal(first[0], second[0])
    assert engine.split_text("  ", VOICE, SynthesisParams()) == []


def test_fake_engine_fail_on_and_release() -> None:
    engine = FakeEngine(delay=60.0, fail_on="boom")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            engine.synthesize_batch([_request("fine", 0), _request("it goes boom", 0)])
        except FakeEngineFailure as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert engine.started.wait(10)
    engine.release()  # ends the 60 s delay at once
    worker.join(10)
    assert not worker.is_alive()
    assert len(errors) == 1
    assert "boom" in str(errors[0])
    assert engine.batches == [2]


# How the engine imports f5-tts: never through f5_tts/model/__init__.py (see engine/f5_package.py).

INFERENCE = Path(__file__).resolve().parents[2] / "inference" / "tts_inference"


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (imports start from nothing); its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **OFFLINE},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_f5_tts_import_goes_through_import_f5() -> None:
    direct = []
    for path in sorted(INFERENCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            if any(name == "f5_tts" or name.startswith("f5_tts.") for name in names):
                direct.append(f"{path.relative_to(INFERENCE)}:{node.lineno}")
    assert not direct, f"import f5_tts modules with engine.f5_package.import_f5: {direct}"


@pytest.mark.slow
def test_the_engine_leaves_the_trainer_unimported() -> None:
    """The package's own classes, no trainer, and f5_tts.model still behaves as the package."""
    code = """
import sys
import tts_inference.engine.f5 as engine
import tts_inference.tiny_model
import f5_tts.model
from f5_tts.model import CFM, DiT, utils
assert not {"f5_tts.model.trainer", "f5_tts.model.dataset", "wandb", "datasets"} & set(sys.modules)
assert (CFM, DiT, utils) == (engine.CFM, engine.DiT, engine.f5_utils)
assert CFM.__module__ == "f5_tts.model.cfm" and DiT.__module__ == "f5_tts.model.backbones.dit"
assert f5_tts.model is sys.modules["f5_tts.model"] and "Trainer" not in vars(f5_tts.model)
# f5_tts.api finds a backbone by its dotted name:
from hydra.utils import get_class
assert get_class("f5_tts.model.DiT") is DiT
# Asked for, Trainer is imported as the package's __init__.py would have bound it.
from f5_tts.model import Trainer
assert Trainer.__module__ == "f5_tts.model.trainer" and "wandb" in sys.modules
try:
    from f5_tts.model import NoSuchName
except ImportError:
    print("ok")
"""
    assert _python(code).split() == ["ok"]


@pytest.mark.slow
def test_the_engine_uses_an_f5_tts_model_already_imported() -> None:
    code = """
import sys
import f5_tts.model
real = sys.modules["f5_tts.model"]
import tts_inference.engine.f5 as engine
assert sys.modules["f5_tts.model"] is real and "Trainer" in vars(real)
assert engine.CFM is real.CFM and engine.DiT is real.DiT
print("ok")
"""
    assert _python(code).split() == ["ok"]


# F5Engine on the tiny model.


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """Nothing here may reach a model hub; set before f5_tts is imported."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE.items():
            mp.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_inference.tiny_model import make_model

    return make_model(tmp_path_factory.mktemp("engine") / "tiny")


@pytest.fixture(scope="module")
def engine(tiny: Path) -> Any:
    from tts_inference.engine.f5 import F5Engine

    # Batching on, as on a GPU, in float32 (a CPU's own choice, int8, runs one per batch).
    loaded = F5Engine(tiny, device="cpu", dtype="float32", max_batch=8)
    loaded.load()
    yield loaded
    loaded.unload()


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Records any attempt to download from the hub (and fails it)."""
    import huggingface_hub
    from f5_tts.infer import utils_infer

    calls: list[tuple[Any, ...]] = []

    def download(*args: Any, **kwargs: Any) -> str:
        calls.append((args, kwargs))
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(utils_infer, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls


def test_loads_the_folder(tiny: Path, engine: Any) -> None:
    from safetensors.torch import load_file

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    info = engine.info()
    assert info["device"] == engine.device == "cpu"
    assert info["model"] == "tiny"
    assert info["dtype"] == "float32"
    assert info["attn_backend"] == "torch"
    assert info["f5_tts"] == "1.1.22"
    tensors = load_file(str(tiny / "model_1250000.safetensors"))
    weights = {k.removeprefix("ema_model."): v for k, v in tensors.items() if k.startswith("ema_")}
    # Every parameter is in the checkpoint (which also holds buffers such as rotary frequencies).
    names = [name for name, _ in engine._model.named_parameters()]
    assert info["parameters"] == sum(weights[name].numel() for name in names)
    state = engine._model.state_dict()
    assert all(state[k].equal(v) for k, v in weights.items())
    # Padding is masked in every attention layer.
    processors = [block.attn.processor for block in engine._model.transformer.transformer_blocks]
    assert processors
    assert all(p.attn_mask_enabled for p in processors)


def test_the_vocab_is_the_folders(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from f5_tts.model import utils as f5_utils

    from tts_inference.engine.f5 import F5Engine

    paths: list[str] = []
    real = f5_utils.get_tokenizer

    def spy(path: str, tokenizer: str) -> Any:
        paths.append(path)
        return real(path, tokenizer)

    monkeypatch.setattr(f5_utils, "get_tokenizer", spy)
    engine = F5Engine(tiny, device="cpu")
    engine.load()
    assert paths == [str(tiny / "vocab.txt")]
    assert engine._model.vocab_char_map == real(str(tiny / "vocab.txt"), "custom")[0]


@pytest.mark.parametrize(
    "missing",
    [
        "model.yaml",
        "model_1250000.safetensors",
        "vocab.txt",
        "vocos/config.yaml",
        "vocos/pytorch_model.bin",
    ],
)
def test_a_missing_file_is_named_and_never_downloaded(
    tiny: Path, tmp_path: Path, missing: str, no_downloads: list[tuple[Any, ...]]
) -> None:
    from tts_inference.engine.f5 import EngineError, F5Engine

    folder = shutil.copytree(tiny, tmp_path / "model")
    (folder / missing).unlink()
    engine = F5Engine(folder, device="cpu")
    with pytest.raises(EngineError, match=re.escape(str(folder / missing))):
        engine.load()
    assert no_downloads == []
    with pytest.raises(EngineError, match="not loaded"):
        engine.synthesize_batch([_request(MIDDLE, 0)])


def test_a_corrupt_checkpoint_is_named(tiny: Path, tmp_path: Path) -> None:
    from tts_inference.engine.f5 import EngineError, F5Engine

    folder = shutil.copytree(tiny, tmp_path / "model")
    (folder / "model_1250000.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(EngineError, match=re.escape(str(folder / "model_1250000.safetensors"))):
        F5Engine(folder, device="cpu").load()


def test_bad_settings_are_refused(tiny: Path) -> None:
    import torch

    from tts_inference.engine.f5 import EngineError, F5Engine

    with pytest.raises(EngineError, match="dtype"):
        F5Engine(tiny, device="cpu", dtype="int4")
    with pytest.raises(EngineError, match="CUDA"):
        F5Engine(tiny, device="cpu", attn_backend="flash_attn")
    with pytest.raises(ValueError, match="max_batch"):
        F5Engine(tiny, device="cpu", max_batch=0)
    with pytest.raises(ValueError, match="concurrent_batches"):
        F5Engine(tiny, device="cpu", concurrent_batches=0)
    assert F5Engine(tiny, device="cpu", dtype="bfloat16").info()["dtype"] == "bfloat16"
    # A CPU's defaults: one request per batch; dtype and batches at once as the CPU's
    # features choose (engine/cpu.py), and said in the build info.
    from tts_inference.engine import cpu

    expected = cpu.plan(
        "auto",
        None,
        quantized_engines=torch.backends.quantized.supported_engines,
    )
    defaults = F5Engine(tiny, device="cpu").info()
    assert defaults["max_batch"] == 1
    assert (defaults["dtype"], defaults["concurrent_batches"], defaults["cpu_choice"]) == (
        expected.dtype,
        expected.concurrent_batches,
        expected.reason,
    )
    assert F5Engine(tiny, device="cpu", dtype="float32").info()["cpu_choice"] == cpu.REASON_FLAG


def test_one_request_speaks_for_the_f5_duration(engine: Any) -> None:
    [audio] = engine.synthesize_batch([_request(MIDDLE, 0)])
    assert isinstance(audio, np.ndarray)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() > 0
    # vocos' ISTFT gives hop samples per frame, less one frame.
    assert abs(len(audio) - _expected_frames(MIDDLE) * HOP) <= HOP


@pytest.mark.parametrize(("text", "speed"), [(MIDDLE, 1.0), ("Hi.", 1.3), (LONG, 1.5)])
def test_same_audio_as_f5_tts_infer_batch_process(engine: Any, text: str, speed: float) -> None:
    """The engine prepares a request exactly as f5-tts does: same seed, same samples."""
    import torch
    from f5_tts.infer.utils_infer import infer_batch_process

    [ours] = engine.synthesize_batch([_request(text, 7, speed=speed)])
    torch.manual_seed(7)  # f5-tts draws its noise from the global generator
    theirs, sample_rate, _ = next(
        infer_batch_process(
            (torch.from_numpy(VOICE.audio).unsqueeze(0), SAMPLE_RATE),
            REF_TEXT + " ",  # as preprocess_ref_audio_text leaves it
            [text],
            engine._model,
            engine._vocoder,
            nfe_step=4,
            speed=speed,
            device="cpu",
            progress=None,
        )
    )
    assert sample_rate == SAMPLE_RATE
    assert _max_diff(ours, theirs.astype(np.float32)) <= 1e-6


def _alone_and_batched(engine: Any) -> tuple[Audio, list[Audio]]:
    alone = engine.synthesize_batch([_request(MIDDLE, 7)])[0]
    batch = engine.synthesize_batch([_request(SHORT, 1), _request(MIDDLE, 7), _request(LONG, 2)])
    return alone, batch


def _bound(audio: Audio) -> float:
    """How far batching may move a sample: 1e-4 of the peak, far below anything audible.

    Measured on this model (float32, CPU), alone vs batched: with the attention mask about
    1e-6 of the peak (4e-8 absolute: float rounding, as the kernels differ with and without
    a mask); without it 3e-3 for the middle item and 8e-3 for the shortest. The bound sits
    100x above the first and 30x below the second.
    """
    return 1e-4 * float(np.abs(audio).max())


def test_batching_does_not_change_a_seeded_request(engine: Any) -> None:
    alone, batch = _alone_and_batched(engine)
    assert [len(a) for a in batch] == sorted(len(a) for a in batch)
    assert len(batch[0]) < len(batch[1]) < len(batch[2])
    assert _max_diff(alone, batch[1]) <= _bound(alone)
    # Not vacuous: another seed is other audio, and so is the neighbour's.
    other = engine.synthesize_batch([_request(MIDDLE, 8)])[0]
    assert _max_diff(alone, other) > 100 * _bound(alone)
    # The shortest item, padded the most, is unchanged too.
    short_alone = engine.synthesize_batch([_request(SHORT, 1)])[0]
    assert _max_diff(short_alone, batch[0]) <= _bound(short_alone)


def _mels(engine: Any) -> list[Any]:
    """Three mels of different lengths, as the sampler hands them to the vocoder."""
    import torch

    generator = torch.Generator().manual_seed(5)
    n_mels = engine._model.num_channels
    return [torch.randn(n_mels, frames, generator=generator) for frames in (40, 95, 61)]


def test_a_batch_of_mels_is_decoded_in_one_pass_each_as_if_alone(engine: Any) -> None:
    import torch

    from tts_inference.engine import vocos_batch

    mels = _mels(engine)
    passes: list[int] = []
    block = engine._vocoder.backbone.convnext[0]
    hook = block.register_forward_hook(lambda *_: passes.append(1))
    try:
        with torch.inference_mode():
            alone = [engine._vocoder.decode(m.unsqueeze(0)).squeeze(0).numpy() for m in mels]
            assert len(passes) == 3
            passes.clear()
            batched = [w.numpy() for w in vocos_batch.decode(engine._vocoder, mels)]
    finally:
        hook.remove()
    assert len(passes) == 1  # the backbone ran once for the three
    assert [len(w) for w in batched] == [len(w) for w in alone]
    # About 1e-6 of the peak here (float rounding: the kernels see other shapes).
    for a, b in zip(alone, batched, strict=True):
        assert _max_diff(a, b) <= _bound(a)


def test_without_zeroing_the_padding_a_batched_decode_changes_the_shorter_items(
    engine: Any,
) -> None:
    """The reverse check: padded frames left as the LayerNorm makes them reach an item's end."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    mels = _mels(engine)
    with torch.inference_mode():
        shortest = engine._vocoder.decode(mels[0].unsqueeze(0)).squeeze(0).numpy()
        padded = pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)
        features = engine._vocoder.backbone(padded)
        plain = engine._vocoder.head(features[:1, : mels[0].shape[-1]]).squeeze(0).numpy()
    # 5e-3 of the peak here: 50x the bound the batched decode keeps.
    assert _max_diff(shortest, plain) > 10 * _bound(shortest)


def test_a_vocoder_that_cannot_be_batched_is_refused() -> None:
    from tts_inference.engine import vocos_batch

    class Other:
        backbone = object()

    with pytest.raises(vocos_batch.VocoderError, match="not vocos' ConvNeXt backbone"):
        vocos_batch.check(Other())


def test_without_the_attention_mask_batching_changes_the_audio(tiny: Path) -> None:
    """The reverse check: the same test fails when padded frames take part in attention."""
    from tts_inference.engine.f5 import F5Engine

    unmasked = F5Engine(tiny, device="cpu", dtype="float32", max_batch=8)
    unmasked._attn_mask_enabled = False
    unmasked.load()
    assert unmasked.info()["attn_mask"] is False
    alone, batch = _alone_and_batched(unmasked)
    assert _max_diff(alone, batch[1]) > 10 * _bound(alone)


def _float32(tiny: Path) -> Any:
    from tts_inference.engine.f5 import F5Engine

    engine = F5Engine(tiny, device="cpu", dtype="float32")
    engine.load()
    return engine._model


def test_int8_on_cpu_speaks_and_batching_still_changes_nothing(tiny: Path) -> None:
    """int8 runs requests one at a time (its activation scales are per tensor), so
    a batch cannot change a request's audio; its audio stays close to float32's."""
    from tts_inference.engine.f5 import F5Engine

    int8 = F5Engine(tiny, device="cpu", dtype="int8", max_batch=8)
    int8.load()
    assert int8.info()["dtype"] == "int8"
    # The Linear weights are packed out of parameters(), and still counted.
    assert int8.info()["parameters"] == sum(p.numel() for p in _float32(tiny).parameters())
    alone, batch = _alone_and_batched(int8)
    assert np.isfinite(alone).all()
    assert _max_diff(alone, batch[1]) == 0.0


def test_mixed_settings_come_back_in_order(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [
        _request(LONG, 1, nfe_step=2),
        _request(MIDDLE, 2, nfe_step=4),
        _request(SHORT, 3, nfe_step=2, speed=1.5),
        _request(MIDDLE, None, nfe_step=4, speed=0.8),
        _request(MIDDLE, None, nfe_step=4, speed=0.8),
    ]
    # max_batch 2 splits the nfe_step=4 group into two sample() calls.
    monkeypatch.setattr(engine, "max_batch", 2)
    out = engine.synthesize_batch(requests)
    assert len(out) == len(requests)
    for audio, request in zip(out, requests, strict=True):
        expected = _expected_frames(request.text, request.params.speed) * HOP
        assert abs(len(audio) - expected) <= HOP, request
        assert np.isfinite(audio).all()
    # Seeded items are their own audio; unseeded ones each get a fresh seed.
    assert _max_diff(out[1], engine.synthesize_batch(requests[1:2])[0]) <= _bound(out[1])
    assert _max_diff(out[3], out[4]) > 0
    assert engine.synthesize_batch([]) == []


def test_two_batches_at_once_each_speak_their_own_audio_and_share_the_cores(tiny: Path) -> None:
    """Two threads synthesize on one model at once (concurrent_batches=2, a CPU's setting):
    each request's audio is what it is alone, and a batch running alone gets every core."""
    import torch

    from tts_inference.engine.f5 import F5Engine

    engine = F5Engine(tiny, device="cpu", concurrent_batches=2, max_batch=1)
    engine.load()
    assert engine.info()["concurrent_batches"] == 2
    cores = torch.get_num_threads()
    texts = [(SHORT, 11), (MIDDLE, 12), (LONG, 13), (MIDDLE, 14)]
    alone = [engine.synthesize_batch([_request(t, seed)])[0] for t, seed in texts]

    steps: list[tuple[int, int]] = []  # (thread, its intra-op threads) at each ODE step
    both_running = threading.Barrier(2, timeout=60)

    def record(module: Any, args: Any) -> None:
        steps.append((threading.get_ident(), torch.get_num_threads()))
        if len([s for s in steps if s[0] == threading.get_ident()]) == 1:
            # Each thread's first step waits for the other's: both are inside sample(),
            # past their noise draw (a lock held past it would deadlock here).
            both_running.wait()

    hook = engine._model.transformer.register_forward_pre_hook(record)
    try:
        results: dict[int, Audio] = {}

        def run(indices: Sequence[int]) -> None:
            for i in indices:
                text, seed = texts[i]
                results[i] = engine.synthesize_batch([_request(text, seed)])[0]

        workers = [threading.Thread(target=run, args=(ix,)) for ix in ([0, 2], [1, 3])]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
    finally:
        hook.remove()
    assert sorted(results) == [0, 1, 2, 3]
    for i, audio in enumerate(alone):
        assert len(results[i]) == len(audio)
        assert _max_diff(results[i], audio) <= _bound(audio), texts[i]
    # Not vacuous: the four requests are four different sounds.
    assert min(_max_diff(alone[1], alone[3]), _max_diff(alone[0], alone[2][: len(alone[0])])) > 0
    if cores >= 2:
        assert (cores // 2) in {n for _, n in steps}  # shared while both ran
        steps.clear()
        hook = engine._model.transformer.register_forward_pre_hook(
            lambda m, a: steps.append((0, torch.get_num_threads()))
        )
        engine.synthesize_batch([_request(MIDDLE, 12)])
        hook.remove()
        assert {n for _, n in steps} == {cores}  # alone again: every core


def test_a_second_thread_cannot_seed_until_the_first_has_drawn_its_noise() -> None:
    """CFM.sample seeds torch's global generator, then draws: the two must not interleave."""
    from tts_inference.engine.f5 import _NoiseLock, _SeedPerItem

    lock = _NoiseLock()
    first = _SeedPerItem([1, 2], lock)
    assert (int(first), int(first)) == (1, 2)  # one thread seeds twice: no self-deadlock
    seeded = threading.Event()

    def second() -> None:
        assert int(_SeedPerItem([3], lock)) == 3
        seeded.set()
        lock.release()

    other = threading.Thread(target=second)
    other.start()
    assert not seeded.wait(0.3)  # blocked while the first thread draws
    lock.release()  # the first thread's first transformer step
    assert seeded.wait(30)
    other.join(30)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[;:,.!?])\s+", text) if s]


def test_split_text_chunks_at_sentence_ends(engine: Any) -> None:
    voice = Voice("long", _reference_audio(seconds=8.0), REF_TEXT)
    # infer_process's budget: 22 s of reference and chunk at the reference's pace.
    max_chars = int(len((REF_TEXT + " ").encode("utf-8")) / 8.0 * (22 - 8.0))
    assert max_chars == 50
    assert engine.chunk_budget(voice, SynthesisParams()) == max_chars
    paragraph = (
        "The operator starts the pods warm. Each init container finds the cache complete! "
        "Nothing is downloaded twice? The server batches requests on one GPU. "
        "This sentence is a good deal longer than the fifty bytes that one chunk may hold here. "
        "Short. Also short."
    )
    chunks = engine.split_text(paragraph, voice, SynthesisParams())
    assert len(chunks) >= 4
    assert " ".join(chunks) == paragraph
    sentences = _sentences(paragraph)
    for chunk in chunks:
        assert len(chunk.encode("utf-8")) <= max_chars, chunk
    # Sentences that fit stay whole; the long one is cut at spaces, never inside a word.
    for sentence in sentences:
        if len(sentence) <= max_chars:
            assert any(sentence in chunk for chunk in chunks), sentence
    assert "Short. Also short." in chunks
    words = paragraph.split()
    assert [w for chunk in chunks for w in chunk.split()] == words
    # Faster speech fits more text per chunk.
    assert len(engine.split_text(paragraph, voice, SynthesisParams(speed=2.0))) < len(chunks)
    assert engine.split_text("", voice, SynthesisParams()) == []
    assert engine.split_text(" \n\t ", voice, SynthesisParams()) == []
    assert engine.split_text("One sentence.", voice, SynthesisParams()) == ["One sentence."]


def test_unload_frees_the_model(tiny: Path) -> None:
    from tts_inference.engine.f5 import EngineError, F5Engine

    engine = F5Engine(tiny, device="cpu")
    engine.load()
    assert engine.info()["parameters"] > 0
    engine.warmup(VOICE)
    engine.unload()
    assert engine.info()["parameters"] is None
    with pytest.raises(EngineError, match="not loaded"):
        engine.synthesize_batch([_request(SHORT, 0)])


# The full-size architecture on a GPU.


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tts_inference.tiny_model import FULL_ARCH, make_model

    return make_model(
        tmp_path_factory.mktemp("full") / "model", arch=FULL_ARCH, vocoder="full", name="full"
    )


def _speaks(engine: Any, texts: Sequence[str]) -> list[Audio]:
    out: list[Audio] = engine.synthesize_batch(
        [_request(t, i, nfe_step=8) for i, t in enumerate(texts)]
    )
    for audio, text in zip(out, texts, strict=True):
        assert audio.dtype == np.float32
        assert np.isfinite(audio).all()
        assert abs(len(audio) - _expected_frames(text) * HOP) <= HOP
    return out


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_full_size_on_gpu(full_size: Path, dtype: str) -> None:
    from tts_inference.engine.f5 import F5Engine

    engine = F5Engine(full_size, device="cuda", dtype=dtype, attn_backend="torch")
    engine.load()
    try:
        info = engine.info()
        assert info["dtype"] == dtype
        assert info["device"].startswith("cuda")
        assert 330e6 < info["parameters"] < 340e6
        _speaks(engine, [MIDDLE, SHORT])
    finally:
        engine.unload()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_full_size_with_flash_attn(full_size: Path) -> None:
    pytest.importorskip("flash_attn")
    from tts_inference.engine.f5 import F5Engine

    engine = F5Engine(full_size, device="cuda", dtype="bfloat16", attn_backend="auto")
    engine.load()
    try:
        assert engine.info()["attn_backend"] == "flash_attn"
        _speaks(engine, [MIDDLE, SHORT, LONG])
        # A padded batch: flash_attn unpads once an ODE step (a nonzero and an item), not
        # three times in each of the 22 blocks.
        from bench import host_syncs

        syncs = host_syncs.measure(engine, VOICE, items=3)
        assert syncs["per_step"] <= 2, syncs["sites"]
    finally:
        engine.unload()


def test_a_flash_attn_that_does_not_import_is_said_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tts_inference.engine import f5

    broken = tmp_path / "flash_attn"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        "raise ImportError('undefined symbol: _ZN3c104cuda9SetDeviceEi')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    with caplog.at_level("WARNING", logger="tts_inference.engine.f5"):
        backend, fallback = f5._resolve_attn_backend("auto", "cuda:0")
    assert backend == "torch"
    assert fallback is not None
    assert "installed but does not import: ImportError: undefined symbol" in fallback
    assert "using torch's attention instead" in caplog.text
    with pytest.raises(f5.EngineError, match="does not import"):
        f5._resolve_attn_backend("flash_attn", "cuda:0")
    # Not installed at all is no fallback: torch's attention is simply what there is.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert f5._resolve_attn_backend("auto", "cuda:0") == ("torch", None)
    assert f5._resolve_attn_backend("auto", "cpu") == ("torch", None)
