"""The sampling loop makes no host sync per ODE step, and computes what f5-tts's own does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bench import host_syncs

from tts_inference.engine import nosync

ROOT = Path(__file__).resolve().parents[2]


def _flow(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A nonlinear field that depends on the time point, as the DiT's does."""
    return torch.tanh(y * 1.7 + t) - 0.3 * y * t


@pytest.mark.parametrize("steps", [1, 4, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_euler_is_torchdiffeqs_to_the_bit(steps: int, dtype: torch.dtype) -> None:
    from torchdiffeq import odeint

    from tts_inference.engine.f5_package import import_f5

    f5_utils = import_f5("f5_tts.model.utils")
    # CFM.sample's grid: empirically pruned steps, then sway sampling.
    t = f5_utils.get_epss_timesteps(steps, device="cpu", dtype=dtype)
    t = t + -1.0 * (torch.cos(torch.pi / 2 * t) - 1 + t)
    y0 = torch.randn(2, 37, 100, generator=torch.Generator().manual_seed(steps)).to(dtype)
    ours = nosync.euler(_flow, y0, t, method="euler")
    theirs = odeint(_flow, y0, t, method="euler")
    assert ours.shape == theirs.shape == (len(t), *y0.shape)
    assert torch.equal(ours, theirs)


def test_euler_refuses_another_method() -> None:
    t = torch.linspace(0, 1, 3)
    with pytest.raises(ValueError, match="only the plain euler"):
        nosync.euler(_flow, torch.zeros(2), t, method="dopri5")
    with pytest.raises(ValueError, match="only the plain euler"):
        nosync.euler(_flow, torch.zeros(2), t, method="euler", options={"perturb": True})


def _unpad_reference(calls: list[torch.Tensor]) -> Any:
    """flash_attn.bert_padding.unpad_input's contract (flash_attn needs CUDA to import)."""

    def unpad_input(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[Any, ...]:
        calls.append(mask)
        seqlens = mask.sum(dim=-1, dtype=torch.int32)
        indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
        max_seqlen = int(seqlens.max().item())
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
        rows = hidden.reshape(-1, *hidden.shape[2:])
        return rows[indices], indices, cu_seqlens, max_seqlen, seqlens

    return unpad_input


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(a, b, strict=True)
    )


def test_unpad_works_out_a_mask_once_and_gathers_each_tensor() -> None:
    calls: list[torch.Tensor] = []
    reference = _unpad_reference([])
    unpad = nosync.unpad_once_per_mask(_unpad_reference(calls))
    generator = torch.Generator().manual_seed(0)
    mask = torch.arange(9).unsqueeze(0) < torch.tensor([[9], [4], [6]])
    # One step: query, key and value of each of two blocks, all with the step's mask.
    for _ in range(2):
        for _ in range(3):
            hidden = torch.randn(3, 9, 4, 8, generator=generator).transpose(1, 2).transpose(1, 2)
            assert _same(unpad(hidden, mask), reference(hidden, mask))
    assert len(calls) == 1
    # The next step's mask is another tensor (equal or not): worked out again.
    other = mask.clone()
    other[1, 4] = True
    hidden = torch.randn(3, 9, 4, 8, generator=generator)
    assert _same(unpad(hidden, other), reference(hidden, other))
    assert len(calls) == 2


def test_install_wraps_unpad_once() -> None:
    class Cfm:
        odeint: Any = None

    class Modules:
        @staticmethod
        def unpad_input(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[Any, ...]:
            raise AssertionError("not called")

    nosync.install(Cfm, Modules)
    wrapped = Modules.unpad_input
    nosync.install(Cfm, Modules)
    assert Modules.unpad_input is wrapped
    assert Cfm.odeint is nosync.euler

    class NoFlashAttn:
        pass

    nosync.install(Cfm, NoFlashAttn)
    assert not hasattr(NoFlashAttn, "unpad_input")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tts_inference.engine.f5 import F5Engine
    from tts_inference.tiny_model import make_model

    folder = make_model(tmp_path_factory.mktemp("nosync") / "model")
    engine = F5Engine(folder, device="cpu", dtype="float32", max_batch=2)
    engine.load()
    return engine


def test_a_batch_makes_no_host_sync_per_ode_step(engine: Any) -> None:
    from tts_inference.voices import VoiceStore

    voice = VoiceStore(None).get("default")
    result = host_syncs.measure(engine, voice, items=2)
    assert result["per_step"] == 0, result["sites"]
    # What is left happens once a batch, before the loop (preparing each item, the grid,
    # the noise) and after it (the loudness of each item).
    assert 0 < result["per_batch"] <= 16, result["sites"]


def test_torchdiffeq_would_wait_on_the_device_every_step(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reverse check: the count sees the syncs the sampler no longer makes."""
    from torchdiffeq import odeint

    from tts_inference.engine import f5
    from tts_inference.voices import VoiceStore

    monkeypatch.setattr(f5.cfm_module, "odeint", odeint)
    result = host_syncs.measure(engine, VoiceStore(None).get("default"), items=2)
    solver = {s: r for s, r in result["sites"].items() if s.startswith("torchdiffeq.")}
    assert sum(r["per_step"] for r in solver.values()) == 4, result["sites"]


def test_the_count_runs_as_a_program() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/host_syncs.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "in all: 0.0 a step" in proc.stdout
