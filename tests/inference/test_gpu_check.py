"""The GPU check runs end to end on the CPU (tiny model), so it is one call away from GPU figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_check_dry_run_writes_its_figures(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["environment"]["wheels_not_installed"] == []
    assert "gpu" in result["tests"]["tail"]  # the gpu-marked tests were collected
    syncs = result["host_syncs"]["report"]
    assert (syncs["items"], syncs["per_step"]) == (3, 0)
    gain = result["compile"]["report"]
    assert (gain["size"], gain["dtype"]) == ("tiny", "float32")
    assert gain["eager_ms"]["best"] > 0
    assert gain["compiled_ms"]["best"] > 0
    assert gain["max_abs_difference"] <= 1e-3 * gain["output_peak"]
    report = result["server"]["report"]
    assert [level["concurrency"] for level in report["levels"]] == [1, 4]
    assert all(level["throughput"] > 0 for level in report["levels"])
    assert report["baseline"]["throughput"] > 0
    assert report["streaming"]["first_byte_seconds"] > 0
    assert "tts_build_info{" in report["server_build_info"]
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| 1 |" in table
    assert "| 4 |" in table
    assert "host syncs of a batch of 3 (torch attention): 0 an ODE step" in table
    assert "torch.compile of a DiT block (tiny, float32, 870 frames)" in table
