"""What a CPU server runs with when no flag says: chosen from torch's build, never a timing."""

from __future__ import annotations

import pytest

from tts_inference.engine import cpu

X86 = ["qnnpack", "none", "onednn", "x86", "fbgemm"]  # torch's x86-64 builds
NO_INT8 = ["qnnpack", "none"]


@pytest.mark.parametrize(
    ("engines", "expected"),
    [
        (X86, ("int8", 1, cpu.REASON_INT8)),
        (NO_INT8, ("float32", 1, cpu.REASON_PLAIN)),
    ],
)
def test_auto_follows_torchs_build(engines: list[str], expected: tuple[str, int, str]) -> None:
    got = cpu.plan("auto", None, quantized_engines=engines)
    # One batch at a time, with every core: a request's audio never depends on what runs
    # beside it (tests/inference/test_run_job.py joins parts into one run's audio).
    assert (got.dtype, got.concurrent_batches, got.reason) == expected
    assert got.why


def test_auto_never_chooses_bfloat16() -> None:
    for engines in (X86, NO_INT8):
        assert cpu.plan("auto", None, quantized_engines=engines).dtype != "bfloat16"


def test_what_is_asked_for_wins() -> None:
    got = cpu.plan("float32", None, quantized_engines=X86)
    assert (got.dtype, got.concurrent_batches, got.reason) == ("float32", 1, cpu.REASON_FLAG)
    got = cpu.plan("auto", 2, quantized_engines=X86)
    assert (got.dtype, got.concurrent_batches) == ("int8", 2)
