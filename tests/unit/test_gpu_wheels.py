"""The wheels the GPU check carries cannot drift from the inference image's lock."""

from __future__ import annotations

import subprocess
import sys

from bench import gpu_wheels


def test_the_wheel_list_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, "bench/gpu_wheels.py", "--check"],
        cwd=gpu_wheels.ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_every_locked_distribution_is_on_the_device_or_carried() -> None:
    lock = gpu_wheels._entries(gpu_wheels.LOCK)
    device = gpu_wheels._entries(gpu_wheels.DEVICE)
    carried = gpu_wheels._entries(gpu_wheels.WHEELS)
    assert lock, "the lock lists nothing"
    assert {"torch", "torchaudio"} <= device.keys()  # never carried: the device's own CUDA build
    assert {"f5-tts", "fastapi", "uvicorn", "boto3"} <= carried.keys()
    for name, version in lock.items():
        assert name in device or carried.get(name) == version, name
