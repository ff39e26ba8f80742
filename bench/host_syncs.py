"""Where a batch makes the host wait for the device: counted on any machine, CPU included.

On a GPU, an operation whose result decides Python's next step (``.item()``,
``bool(tensor)``, ``int(tensor)``, ``nonzero``, a boolean mask's selection) stops
the host until every queued kernel has run, and the device then idles while the
host launches the next ones. Those operations are the same on a CPU, so this
program counts them there, under a torch dispatch mode, for one batch through
the engine, and names the Python line that asked for each. Run at two step
counts, it splits what happens once per batch from what happens at every ODE
step (the sampling loop). Copies of the finished waves back to the host, one
per item after the loop, are not counted.

    python bench/host_syncs.py                      # tiny model, CPU
    python bench/host_syncs.py --size full --device cuda
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The aten operations that make the host wait for a device's result.
HOST_SYNC_OPS = frozenset(
    {
        "aten::item",  # .item(), int(t), float(t)
        "aten::is_nonzero",  # bool(t): if, while, assert, and, or
        "aten::_local_scalar_dense",  # what both become when no mode sees them first
        "aten::nonzero",
        "aten::masked_select",
        "aten::unique_consecutive",
        "aten::_unique2",
        "aten::equal",
    }
)
TEXTS = (
    "Hello from a tiny random model on Kubernetes.",
    "A second, somewhat longer request in the same batch, to pad the first.",
)


def _site() -> str:
    """The innermost frame outside torch itself: the module and line that asked for the sync."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if not (module == "torch" or module.startswith("torch.") or module == __name__):
            return f"{module}:{frame.f_lineno} ({frame.f_code.co_name})"
        frame = frame.f_back
    return "torch"


@contextmanager
def counting(device: str = "cpu") -> Iterator[collections.Counter[str]]:
    """Count host-blocking operations by the line that asked for them.

    On a GPU only those on the GPU's tensors count (a tensor on the host costs no
    wait). On a CPU every tensor is on the device, so the count is what a GPU
    would see if every tensor lived there: an upper bound.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    counts: collections.Counter[str] = collections.Counter()
    everything = torch.device(device).type == "cpu"

    def on_device(args: Any, kwargs: Any) -> bool:
        leaves = tree_leaves((args, kwargs))
        return any(isinstance(x, torch.Tensor) and x.device.type != "cpu" for x in leaves)

    class Mode(TorchDispatchMode):  # type: ignore[no-untyped-call]
        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            if func._schema.name in HOST_SYNC_OPS and (everything or on_device(args, kwargs)):
                counts[_site()] += 1
            return func(*args, **(kwargs or {}))

    with Mode():  # type: ignore[no-untyped-call]
        yield counts


def batch_syncs(engine: Any, voice: Any, steps: int, items: int) -> dict[str, float]:
    """Host syncs of ``items`` requests at ``steps`` ODE steps, by site, per sampler call."""
    from tts_inference.engine.base import SynthesisParams, SynthesisRequest

    requests = [
        SynthesisRequest(TEXTS[i % len(TEXTS)], voice, SynthesisParams(nfe_step=steps, seed=i))
        for i in range(items)
    ]
    calls: list[int] = []
    sample = engine._model.sample

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return sample(*args, **kwargs)

    engine._model.sample = counted
    try:
        with counting(engine.device) as counts:
            engine.synthesize_batch(requests)
    finally:
        del engine._model.sample
    return {site: n / len(calls) for site, n in counts.items()}


def split(low: dict[str, float], high: dict[str, float], steps: tuple[int, int]) -> dict[str, Any]:
    """Per site: how many syncs each ODE step adds, and how many a batch makes besides."""
    rows = {}
    for site in sorted(set(low) | set(high)):
        a, b = low.get(site, 0), high.get(site, 0)
        per_step = (b - a) / (steps[1] - steps[0])
        rows[site] = {"per_step": per_step, "per_batch": a - per_step * steps[0]}
    return {
        "sites": rows,
        "per_step": sum(r["per_step"] for r in rows.values()),
        "per_batch": sum(r["per_batch"] for r in rows.values()),
    }


def measure(
    engine: Any, voice: Any, steps: tuple[int, int] = (2, 4), items: int = 2
) -> dict[str, Any]:
    """Host syncs a batch makes once and at each ODE step, after one batch to warm up."""
    batch_syncs(engine, voice, 1, items)
    low = batch_syncs(engine, voice, steps[0], items)
    high = batch_syncs(engine, voice, steps[1], items)
    return {"steps": list(steps), "items": items, **split(low, high, steps)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", default="float32", help="float32 batches; int8 runs one at a time"
    )
    parser.add_argument("--items", type=int, default=2, help="requests in the batch")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")

    from bench.machine import machine, write_report

    from tts_inference.engine.f5 import F5Engine
    from tts_inference.tiny_model import FULL_ARCH, make_model
    from tts_inference.voices import VoiceStore

    folder = Path(tempfile.mkdtemp(prefix="host-syncs-")) / "model"
    if args.size == "full":
        make_model(folder, arch=FULL_ARCH, vocoder="full")
    else:
        make_model(folder)
    engine = F5Engine(folder, device=args.device, dtype=args.dtype, max_batch=args.items)
    engine.load()
    voice = VoiceStore(None).get("default")
    result = {
        "machine": machine(),
        "engine": engine.info(),
        **measure(engine, voice, items=args.items),
    }
    for site, row in result["sites"].items():
        print(f"{row['per_step']:6.1f} a step  {row['per_batch']:6.1f} a batch  {site}")
    print(f"in all: {result['per_step']:.1f} a step, {result['per_batch']:.1f} a batch")
    if args.out:
        write_report(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
