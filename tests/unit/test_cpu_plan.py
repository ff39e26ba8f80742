"""What a CPU server runs with when no flag says: chosen from the CPU's features."""

from __future__ import annotations

from pathlib import Path

import pytest

from tts_inference.engine import cpu

AMX_XEON = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"}
AVX512_XEON = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni"}
AVX2_EPYC = {"avx2", "fma"}
ENGINES = ["qnnpack", "none", "onednn", "x86", "fbgemm"]


@pytest.mark.parametrize(
    ("flags", "engines", "threads", "expected"),
    [
        (AMX_XEON, ENGINES, 2, ("bfloat16", 1, cpu.REASON_AMX)),
        (AVX512_XEON, ENGINES, 2, ("int8", 2, cpu.REASON_INT8)),
        (AVX2_EPYC, ENGINES, 2, ("int8", 2, cpu.REASON_INT8)),
        (AVX2_EPYC, ENGINES, 1, ("int8", 1, cpu.REASON_INT8)),  # one core: one batch
        (set(), ["qnnpack", "none"], 4, ("float32", 2, cpu.REASON_PLAIN)),  # e.g. an ARM build
    ],
)
def test_auto_follows_the_cpus_features(
    flags: set[str], engines: list[str], threads: int, expected: tuple[str, int, str]
) -> None:
    got = cpu.plan("auto", None, flags=flags, quantized_engines=engines, threads=threads)
    assert (got.dtype, got.concurrent_batches, got.reason) == expected
    assert got.why


def test_what_is_asked_for_wins() -> None:
    got = cpu.plan("float32", None, flags=AMX_XEON, quantized_engines=ENGINES, threads=2)
    assert (got.dtype, got.concurrent_batches, got.reason) == ("float32", 2, cpu.REASON_FLAG)
    got = cpu.plan("bfloat16", None, flags=AVX2_EPYC, quantized_engines=ENGINES, threads=2)
    assert (got.dtype, got.concurrent_batches) == ("bfloat16", 1)
    got = cpu.plan("auto", 1, flags=AVX2_EPYC, quantized_engines=ENGINES, threads=2)
    assert (got.dtype, got.concurrent_batches) == ("int8", 1)


def test_flags_come_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu.cpu_flags(info) == {"fpu", "avx2", "amx_bf16"}
    assert cpu.cpu_flags(tmp_path / "missing") == frozenset()
