"""What a CPU server runs with when no flag says: chosen from torch's build, never a timing."""

from __future__ import annotations

import pytest

from tts_inference.engine import cpu

X86 = ["qnnpack", "none", "onednn", "x86", "fbgemm"]  # torch's x86-64 builds
NO_INT8 = ["qnnpack", "none"]


@pytest.mark.parametrize(
    ("engines", "threads", "expected"),
    [
        (X86, 2, ("int8", 2, cpu.REASON_INT8)),
        (X86, 16, ("int8", 2, cpu.REASON_INT8)),
        (X86, 1, ("int8", 1, cpu.REASON_INT8)),  # one core: one batch at a time
        (NO_INT8, 4, ("float32", 2, cpu.REASON_PLAIN)),
    ],
)
def test_auto_follows_torchs_build(
    engines: list[str], threads: int, expected: tuple[str, int, str]
) -> None:
    got = cpu.plan("auto", None, quantized_engines=engines, threads=threads)
    assert (got.dtype, got.concurrent_batches, got.reason) == expected
    assert got.why


def test_auto_never_chooses_bfloat16() -> None:
    for engines in (X86, NO_INT8):
        assert cpu.plan("auto", None, quantized_engines=engines, threads=2).dtype != "bfloat16"


def test_what_is_asked_for_wins() -> None:
    got = cpu.plan("float32", None, quantized_engines=X86, threads=2)
    assert (got.dtype, got.concurrent_batches, got.reason) == ("float32", 2, cpu.REASON_FLAG)
    got = cpu.plan("bfloat16", None, quantized_engines=X86, threads=2)
    assert (got.dtype, got.concurrent_batches) == ("bfloat16", 1)
    got = cpu.plan("auto", 1, quantized_engines=X86, threads=2)
    assert (got.dtype, got.concurrent_batches) == ("int8", 1)
