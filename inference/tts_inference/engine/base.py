"""The engine interface the server's queue drives.

An engine owns the model on one device. The queue hands it batches of
requests (one text chunk each) from a single worker thread; the engine returns
one float32 waveform per request, in order. Text splitting, cross-fading,
encoding and HTTP live outside the engine.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tts_inference.text import split_text

SAMPLE_RATE = 24_000
#: A stream's first chunk holds at most this fraction of a chunk's budget.
FIRST_CHUNK_DIVISOR = 4

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Voice:
    """A reference voice: mono float32 audio at SAMPLE_RATE and its transcript."""

    name: str
    audio: Audio
    text: str


@dataclass(frozen=True)
class SynthesisParams:
    speed: float = 1.0
    nfe_step: int = 32
    cfg_strength: float = 2.0
    sway_sampling_coef: float = -1.0
    seed: int | None = None


@dataclass(frozen=True)
class SynthesisRequest:
    """One chunk of text to speak in one voice; the unit the queue batches."""

    text: str
    voice: Voice
    params: SynthesisParams = field(default_factory=SynthesisParams)


class Engine(abc.ABC):
    """Loads once, warms up once, then synthesizes batches until unloaded."""

    sample_rate: int = SAMPLE_RATE
    #: How many batches the queue may run at once, each in its own thread, on this one
    #: model. One on a GPU (one stream of work); a CPU engine may share its cores.
    concurrent_batches: int = 1
    #: Most requests per batch, when the server's settings name none.
    max_batch: int = 8

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """Where the model runs, e.g. 'cpu' or 'cuda:0'."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load every weight from local files; never download. Called once."""

    @abc.abstractmethod
    def synthesize_batch(self, requests: Sequence[SynthesisRequest]) -> list[Audio]:
        """Synthesize every request; one waveform per request, in order.

        Batching must not change a request's output: a request with a seed gives
        the same audio alone and inside a batch of other lengths.
        """

    @abc.abstractmethod
    def chunk_budget(self, voice: Voice, params: SynthesisParams) -> int:
        """The most UTF-8 bytes of text one chunk may hold in this voice at these params.

        Within it the model speaks well and never exceeds what it can take.
        """

    def split_text(
        self, text: str, voice: Voice, params: SynthesisParams, *, stream: bool = False
    ) -> list[str]:
        """Any text in chunks of at most the budget (the one splitter, ``text.split_text``).

        ``stream``: the first chunk gets a quarter of the budget, so streamed audio starts
        after a short chunk.
        """
        if not text.strip():
            return []
        budget = self.chunk_budget(voice, params)
        return split_text(text, budget, budget // FIRST_CHUNK_DIVISOR if stream else None)

    def warmup(self, voice: Voice) -> None:
        """One short synthesis so the first real request pays no first-call costs."""
        self.synthesize_batch(
            [SynthesisRequest("Warming up.", voice, SynthesisParams(nfe_step=2, seed=0))]
        )

    def unload(self) -> None:
        """Free the model; the default does nothing."""
        return None

    def info(self) -> dict[str, Any]:
        """Facts for logs and /metrics labels (model name, dtype, attention backend)."""
        return {"device": self.device}


def add_engine_arguments(parser: argparse.ArgumentParser, *, max_batch_help: str) -> None:
    """The device, precision and batch flags every command that loads the engine takes."""
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16", "int8"],
        help="auto: float16 on CUDA; on a CPU int8 (dynamic int8 Linear layers, CPU only) "
        "where torch has a quantized engine, else float32",
    )
    parser.add_argument("--attn-backend", default="auto", choices=["auto", "torch", "flash_attn"])
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help=f"{max_batch_help} (default: 8 on CUDA, 1 on a CPU)",
    )
    parser.add_argument(
        "--concurrent-batches",
        type=int,
        default=None,
        help="batches run at once on the one model, CPU only; they share the cores, and a "
        "batch running alone gets them all; above 1 a request's audio may move slightly with "
        "what runs beside it (default: 1)",
    )
