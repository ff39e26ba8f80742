"""The sampling loop without host syncs: the same arithmetic, no wait on the device per step.

On a GPU, a Python decision on a tensor's value (``bool(t)``, ``.item()``,
``nonzero``) stops the host until the device has run every queued kernel; the
device then idles while the host launches the next. ``bench/host_syncs.py``
counts them. In f5-tts 1.1.22's sampler they came from two places:

- torchdiffeq's fixed-grid solver, which ``CFM.sample`` calls as
  ``odeint(fn, y0, t, method="euler")``: it compares time points as tensors to
  place each output (4 syncs an ODE step, and 4 more a batch checking the grid).
  :func:`euler` is the same method, step for step the same arithmetic
  (``y + (t1 - t0) * f(t0, y)``, bit-identical: tests/inference), without them.
- flash_attn's ``unpad_input``, which every DiT block calls three times for a
  batch with padding (``nonzero`` and ``.item()`` each: 132 syncs an ODE step for
  the 22 blocks of F5TTS_v1_Base). Every block of one step gets the same mask,
  so :func:`unpad_once_per_mask` works out the mask's indices once and reuses
  them for the other calls.

:func:`install` puts both where ``CFM.sample`` and f5-tts's attention look
them up (their modules' globals).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

Unpad = Callable[..., tuple[Any, ...]]


def euler(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    method: str = "euler",
    **options: Any,
) -> torch.Tensor:
    """torchdiffeq's ``odeint(func, y0, t, method="euler")`` for an increasing grid: the
    state at each time point of ``t``, stacked."""
    if method != "euler" or options:
        raise ValueError(f"only the plain euler method is supported, not {method!r} {options}")
    t = t.to(y0.dtype)
    solution = torch.empty(len(t), *y0.shape, dtype=y0.dtype, device=y0.device)
    solution[0] = y0
    y = y0
    for i in range(1, len(t)):
        t0, t1 = t[i - 1], t[i]
        y = y + (t1 - t0) * func(t0, y)
        solution[i] = y
    return solution


def unpad_once_per_mask(unpad: Unpad) -> Unpad:
    """``unpad`` (flash_attn's ``unpad_input(hidden, mask)``), working out a mask's indices
    once: a later call with the same mask object only gathers its rows."""
    last = threading.local()

    def unpad_input(hidden: torch.Tensor, mask: torch.Tensor, *more: Any) -> tuple[Any, ...]:
        seen = getattr(last, "seen", None)
        if more or seen is None or seen[0] is not mask:
            out = unpad(hidden, mask, *more)
            last.seen = None if more else (mask, out[1:])
            return out
        rest = seen[1]
        indices = rest[0]
        rows = hidden.reshape(hidden.shape[0] * hidden.shape[1], *hidden.shape[2:])
        return (rows.index_select(0, indices), *rest)

    unpad_input.wrapped = unpad  # type: ignore[attr-defined]
    return unpad_input


def install(cfm_module: Any, modules_module: Any) -> None:
    """Use :func:`euler` in ``CFM.sample`` and, where flash_attn is imported,
    :func:`unpad_once_per_mask` in f5-tts's attention. Idempotent."""
    cfm_module.odeint = euler
    unpad = getattr(modules_module, "unpad_input", None)
    if unpad is not None and not hasattr(unpad, "wrapped"):
        modules_module.unpad_input = unpad_once_per_mask(unpad)
