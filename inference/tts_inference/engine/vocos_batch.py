"""A batch of mels decoded by vocos in one pass, each wave as if decoded alone.

vocos' backbone is a convolution, a LayerNorm and ConvNeXt blocks whose
depthwise convolutions (kernel 7) see three frames either side; everything
else works on one frame at a time. Decoded alone, a mel's last frames see the
convolutions' zero padding beyond its end. Padded into a batch they would see
the neighbours' padding instead, which after the first LayerNorm is no longer
zero, and the last 27 frames of a shorter item would change. So the padded
frames are set back to zero before each convolution: every frame of an item
then sees exactly what it sees alone. The head (a Linear, then the inverse
STFT, whose overlap-add would mix in padded frames) runs per item on the
item's own frames: a few small kernels against the backbone's eight blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence


class VocoderError(ValueError):
    """The vocoder is not one this decoder can batch."""


def check(vocoder: Any) -> None:
    """Refuse a vocoder whose backbone is not vocos' ConvNeXt one without adaptive norms."""
    backbone = getattr(vocoder, "backbone", None)
    parts = ("embed", "norm", "convnext", "final_layer_norm")
    if backbone is None or not all(hasattr(backbone, p) for p in parts):
        raise VocoderError(f"{type(backbone).__name__} is not vocos' ConvNeXt backbone")
    if getattr(backbone, "adanorm", False):
        raise VocoderError("vocos with adaptive LayerNorm (a bandwidth id) is not supported")


def decode(vocoder: Any, mels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each mel, shaped (n_mels, frames), decoded to its wave (samples,); one backbone pass."""
    if not mels:
        return []
    if len(mels) == 1:
        return [vocoder.decode(mels[0].unsqueeze(0)).squeeze(0)]
    backbone = vocoder.backbone
    frames = [int(m.shape[-1]) for m in mels]
    # (B, frames, n_mels) padded with zeros, as the embedding convolution pads one mel alone.
    x = pad_sequence([m.transpose(0, 1) for m in mels], batch_first=True).transpose(1, 2)
    positions = torch.arange(x.shape[-1], device=x.device)
    lengths = torch.tensor(frames, device=x.device)
    keep = (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1).to(x.dtype)
    x = backbone.embed(x)
    x = backbone.norm(x.transpose(1, 2)).transpose(1, 2)
    for block in backbone.convnext:
        x = block(x * keep)
    x = backbone.final_layer_norm(x.transpose(1, 2))
    return [vocoder.head(x[i : i + 1, :n]).squeeze(0) for i, n in enumerate(frames)]
