"""Layer boundaries seen at run time: what each image imports, in a clean process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name in BLOCKED:
            raise ImportError(f"blocked import of {{name}}")
        return None
sys.meta_path.insert(0, Block())
"""


def _run_blocked(blocked: set[str], code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


def test_operator_imports_without_the_inference_extra() -> None:
    """The operator image has no torch, f5_tts or boto3; importing it must not need them."""
    proc = _run_blocked(
        {"torch", "torchaudio", "f5_tts", "tts_inference", "boto3", "fastapi"},
        """
        import tts_operator, tts_operator.main, tts_operator.config, tts_operator.constants
        import sys
        assert "torch" not in sys.modules
        print("ok")
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_inference_cli_starts_without_torch() -> None:
    """Init containers run the CLI; it must not pull torch in to parse arguments."""
    proc = _run_blocked(
        {"torch", "torchaudio", "f5_tts"},
        """
        import tts_inference.cli as cli
        import sys
        try:
            cli.main(["--version"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert "torch" not in sys.modules
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tts-inference" in proc.stdout


def test_publish_reads_f5_tts_configs_without_importing_it() -> None:
    """A hub folder's model.yaml comes from f5-tts's packaged config, read as a file."""
    code = """
        import sys
        from tts_inference.cache import publish
        from tts_inference import model_folder
        files = ["model_1250000.safetensors", "vocab.txt", "vocos/config.yaml",
                 "vocos/pytorch_model.bin"]
        plan = model_folder.plan(files, folder_name="F5TTS_v1_Base", where="test")
        assert plan is not None and plan.config["arch"]["dim"] == 1024, plan
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "f5_tts"})
        assert not loaded, loaded
        print("ok")
        """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("script", ["tts-operator", "tts-inference"])
def test_console_scripts_are_installed(script: str) -> None:
    from pathlib import Path

    exe = Path(sys.executable).parent / script
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert script in proc.stdout
