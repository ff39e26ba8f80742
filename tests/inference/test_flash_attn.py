"""install-flash-attn: ABI detection, wheel matching, and the command on a real (tiny) wheel.

No torch is imported and no GPU is needed: the ABI is read from fake
torch/version.py files (TTS_TORCH_DIR) or given with --abi-tag, and the wheel
is a hand-written flash_attn wheel whose package imports nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.s3 import S3Server
from tts_inference.flash_attn import (
    Abi,
    check_wheel_fits,
    detect_abi,
    parse_cmake_cxx11_abi,
    parse_torch_version_py,
    parse_wheel_name,
    pythonpath_entry,
)
from tts_inference.storage.bucket import PERMANENT_EXIT, StorageError

PY = f"cp{sys.version_info.major}{sys.version_info.minor}"
PLATFORM = sysconfig.get_platform().replace("-", "_").replace(".", "_")
VERSION = "2.8.3"

# The ABI of the fake torch below; the tiny wheel is labelled for it.
ABI = Abi(python=PY, torch="2.11", cuda="13", cxx11abi=True, platform=PLATFORM)
TAG = ABI.tag

POD = Abi(python="cp311", torch="2.11", cuda="13", cxx11abi=True, platform="linux_x86_64")
FITS = "flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"

VERSION_PY_CU130 = """from typing import Optional

__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip', 'rocm', 'xpu']
__version__ = '2.11.0+cu130'
debug = False
cuda: Optional[str] = '13.0'
git_version = '70d99e998b4955e0049d13a98d77ae1b14db1f45'
hip: Optional[str] = None
"""
VERSION_PY_CU128_OLD_STYLE = (
    "__version__ = '2.7.1+cu128'\ndebug = False\ncuda = '12.8'\nhip = None\n"
)
VERSION_PY_CU118 = '__version__ = "2.1.2+cu118"\ncuda = "11.8"\n'
VERSION_PY_CPU = "__version__ = '2.11.0+cpu'\ndebug = False\ncuda: Optional[str] = None\n"
VERSION_PY_ROCM = "__version__ = '2.11.0+rocm6.4'\ncuda = None\nhip = '6.4.0'\n"
CMAKE_OLD_ABI = 'set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=0")\n'
CMAKE_NEW_ABI = 'set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=1")\n'
CMAKE_NO_FLAG = "find_package(Caffe2 REQUIRED)\n"


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VERSION_PY_CU130, ("2.11.0+cu130", "13.0")),
        (VERSION_PY_CU128_OLD_STYLE, ("2.7.1+cu128", "12.8")),
        (VERSION_PY_CU118, ("2.1.2+cu118", "11.8")),
        (VERSION_PY_CPU, ("2.11.0+cpu", None)),
        (VERSION_PY_ROCM, ("2.11.0+rocm6.4", None)),
        ("", (None, None)),
    ],
)
def test_parse_torch_version_py(text: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_torch_version_py(text) == expected


@pytest.mark.parametrize(
    ("cmake", "version", "expected"),
    [
        (CMAKE_OLD_ABI, "2.5.1", False),
        (CMAKE_NEW_ABI, "2.5.1", True),
        (CMAKE_OLD_ABI, "2.11.0", False),  # the file wins over the default
        (CMAKE_NO_FLAG, "2.11.0+cu130", True),
        (None, "2.7.0", True),
        (None, "2.6.0", False),
    ],
)
def test_parse_cmake_cxx11_abi(cmake: str | None, version: str, expected: bool) -> None:
    assert parse_cmake_cxx11_abi(cmake, version) is expected


def _fake_torch(folder: Path, version_py: str, cmake: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "version.py").write_text(version_py)
    if cmake is not None:
        cmake_dir = folder / "share" / "cmake" / "Torch"
        cmake_dir.mkdir(parents=True)
        (cmake_dir / "TorchConfig.cmake").write_text(cmake)
    return folder


@pytest.mark.parametrize(
    ("version_py", "cmake", "tag"),
    [
        (VERSION_PY_CU130, CMAKE_NO_FLAG, "cu13torch2.11cxx11abiTRUE-cp311"),
        (VERSION_PY_CU128_OLD_STYLE, None, "cu12torch2.7cxx11abiTRUE-cp311"),
        (VERSION_PY_CU118, CMAKE_OLD_ABI, "cu11torch2.1cxx11abiFALSE-cp311"),
        (VERSION_PY_CU118, CMAKE_NEW_ABI, "cu11torch2.1cxx11abiTRUE-cp311"),
    ],
)
def test_detect_abi(tmp_path: Path, version_py: str, cmake: str | None, tag: str) -> None:
    abi = detect_abi(_fake_torch(tmp_path / "torch", version_py, cmake), "cp311", "linux_x86_64")
    assert abi.tag == tag
    assert (
        abi.wheel_name("2.8.3")
        == f"flash_attn-2.8.3+{tag.rsplit('-', 1)[0]}-cp311-cp311-linux_x86_64.whl"
    )


def test_detect_abi_cpu_and_missing(tmp_path: Path) -> None:
    abi = detect_abi(_fake_torch(tmp_path / "cpu", VERSION_PY_CPU), "cp311", "linux_x86_64")
    assert abi.cuda is None
    assert abi.torch == "2.11"
    # version.py without __version__: the package metadata's version is used
    abi = detect_abi(
        _fake_torch(tmp_path / "meta", "cuda = '12.6'\n"), "cp312", "linux_aarch64", "2.8.0"
    )
    assert abi.tag == "cu12torch2.8cxx11abiTRUE-cp312"
    with pytest.raises(StorageError, match=r"cannot read .*version\.py"):
        detect_abi(tmp_path / "nowhere", "cp311", "linux_x86_64")


def test_abi_from_tag() -> None:
    assert Abi.from_tag("cu13torch2.11cxx11abiTRUE-cp311", "linux_x86_64") == POD
    with pytest.raises(StorageError, match="--abi-tag 'cu13-cp311' is not of the form"):
        Abi.from_tag("cu13-cp311", "linux_x86_64")


def test_parse_wheel_name() -> None:
    wheel = parse_wheel_name(
        "/some/where/flash_attn-2.8.3+cu12torch2.7cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    )
    assert (wheel.version, wheel.label, wheel.python, wheel.abi, wheel.platform) == (
        "2.8.3",
        "cu12torch2.7cxx11abiTRUE",
        "cp311",
        "cp311",
        "linux_x86_64",
    )
    built = parse_wheel_name("flash_attn-2.8.3-1-cp311-cp311-linux_x86_64.whl")  # with a build tag
    assert (built.version, built.label) == ("2.8.3", None)


@pytest.mark.parametrize(
    "name",
    [
        FITS,
        "flash_attn-2.8.3-cp311-cp311-linux_x86_64.whl",  # source-built: no label, taken on trust
        "flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-manylinux_2_28_x86_64.whl",
        "Flash_Attn-2.8.3+cu130torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
    ],
)
def test_wheel_fits(name: str) -> None:
    check_wheel_fits(name, POD)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
            "it is for Python cp312, this pod runs cp311",
        ),
        (
            "flash_attn-2.8.3+cu13torch2.10cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
            "it is built for torch 2.10, this pod has torch 2.11",
        ),
        (
            "flash_attn-2.8.3+cu12torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
            "it is built for CUDA 12, this pod's torch uses CUDA 13",
        ),
        (
            "flash_attn-2.8.3+cu13torch2.11cxx11abiFALSE-cp311-cp311-linux_x86_64.whl",
            "it is built with cxx11abiFALSE, this pod's torch uses cxx11abiTRUE",
        ),
        (
            "flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_aarch64.whl",
            "it is for platform linux_aarch64, this pod is linux_x86_64",
        ),
        (
            "flash_attn-2.8.3-cp310-cp310-linux_x86_64.whl",  # no label: Python still checked
            "it is for Python cp310, this pod runs cp311",
        ),
        (
            "flash_attn-2.8.3+mybuild-cp311-cp311-linux_x86_64.whl",
            "local version label 'mybuild' is not of the form",
        ),
    ],
)
def test_wheel_does_not_fit(name: str, reason: str) -> None:
    with pytest.raises(StorageError) as info:
        check_wheel_fits(name, POD)
    message = str(info.value)
    assert message.startswith(f"flash_attn wheel {name} does not fit this pod: ")
    assert reason in message
    assert message.endswith(f"this pod needs {FITS}")


def test_several_mismatches_are_all_named() -> None:
    with pytest.raises(StorageError) as info:
        check_wheel_fits(
            "flash_attn-2.7.4+cu12torch2.7cxx11abiFALSE-cp310-cp310-linux_x86_64.whl", POD
        )
    message = str(info.value)
    for reason in ("Python cp310", "torch 2.7", "CUDA 12", "cxx11abiFALSE"):
        assert reason in message
    assert message.endswith(
        "this pod needs flash_attn-2.7.4+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    )


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("flash_attn-2.8.3.tar.gz", "is not a wheel"),
        ("flash_attn-2.8.3-linux_x86_64.whl", "is not a wheel file name"),
        ("torch-2.11.0-cp311-cp311-linux_x86_64.whl", "is a wheel of 'torch', not of flash_attn"),
    ],
)
def test_not_a_flash_attn_wheel(name: str, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        parse_wheel_name(name)
    with pytest.raises(StorageError, match=match):
        check_wheel_fits(name, POD)


# --------------------------------------------------------------------------- the command


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(folder: Path, name: str, *, bert_padding: bool = True) -> Path:
    """A flash_attn wheel written by hand: a package that imports nothing."""
    wheel = parse_wheel_name(name)
    version = f"{wheel.version}+{wheel.label}" if wheel.label else wheel.version
    dist_info = f"flash_attn-{version}.dist-info"
    files = {
        "flash_attn/__init__.py": f"__version__ = {version!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: flash_attn\nVersion: {version}\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test_flash_attn\nRoot-Is-Purelib: false\n"
            f"Tag: {wheel.python}-{wheel.abi}-{wheel.platform}\n"
        ),
    }
    if bert_padding:
        files["flash_attn/bert_padding.py"] = "def unpad_input(*args):\n    return args\n"
    record = "".join(
        f"{path},{_record_hash(data.encode())},{len(data.encode())}\n"
        for path, data in files.items()
    )
    files[f"{dist_info}/RECORD"] = record + f"{dist_info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


@dataclass
class Setup:
    tmp: Path
    cache: Path
    python: str  # a wrapper of sys.executable that logs every `-m pip` run
    pip_log: Path
    env: dict[str, str]

    def pip_runs(self) -> int:
        return len(self.pip_log.read_text().splitlines()) if self.pip_log.exists() else 0

    def command(self, wheel: Path | str, *extra: str, cache: Path | None = None) -> list[str]:
        return [
            sys.executable, "-m", "tts_inference.flash_attn", "--wheel", str(wheel),
            "--cache-dir", str(cache or self.cache), "--python", self.python, *extra,
        ]  # fmt: skip

    def run(
        self, wheel: Path | str, *extra: str, cache: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(wheel, *extra, cache=cache),
            cwd=self.tmp,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    pip_log = tmp_path / "pip.log"
    wrapper = tmp_path / "bin" / "python"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$$" >> "{pip_log}"; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "TTS_TORCH_DIR", "TTS_TERMINATION_LOG")
    }
    return Setup(tmp_path, tmp_path / "cache", str(wrapper), pip_log, env)


def _summary(stdout: str) -> dict[str, object]:
    lines = stdout.strip().splitlines()
    summary: dict[str, object] = json.loads(
        lines[-2] if lines[-1].startswith("PYTHONPATH=") else lines[-1]
    )
    return summary


def _imports_from(pythonpath: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import flash_attn, flash_attn.bert_padding; print(flash_attn.__file__)",
        ],
        env={**env, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_concurrent_installs_run_pip_once(setup: Setup) -> None:
    wheel = build_wheel(setup.tmp / "wheels", ABI.wheel_name(VERSION))
    procs = [
        subprocess.Popen(
            setup.command(wheel, "--abi-tag", TAG),
            env=setup.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for code, _out, err in results:
        assert code == 0, err
    summaries = [_summary(out) for _, out, _ in results]
    assert sorted(bool(s["installed"]) for s in summaries) == [False, False, False, True]
    assert setup.pip_runs() == 1
    final = setup.cache / "pylib" / "flash-attn" / ABI.folder
    assert {out.strip().splitlines()[-1] for _, out, _ in results} == {f"PYTHONPATH={final}"}
    assert {s["abiTag"] for s in summaries} == {TAG}

    marker = json.loads((final / ".complete").read_text())
    assert marker["wheel"] == wheel.name
    assert marker["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert marker["abiTag"] == TAG
    assert "installedAt" in marker
    assert _imports_from(str(final), setup.env) == str(final / "flash_attn" / "__init__.py")
    # nothing left behind but the install and the lock
    assert sorted(p.name for p in final.parent.iterdir()) == [ABI.folder]
    assert sorted(p.name for p in (setup.cache / ".locks").iterdir()) == [
        f"flash-attn-{ABI.folder}.lock"
    ]
    assert pythonpath_entry(setup.cache, ABI) == str(final)

    # a second run is a no-op: no pip, same marker
    started = time.monotonic()
    again = setup.run(wheel, "--abi-tag", TAG, "--sha256", marker["sha256"])
    assert again.returncode == 0, again.stderr
    assert time.monotonic() - started < 10
    assert _summary(again.stdout)["installed"] is False
    assert again.stdout.strip().splitlines()[-1] == f"PYTHONPATH={final}"
    assert setup.pip_runs() == 1
    assert json.loads((final / ".complete").read_text()) == marker


def test_detected_abi_installs_and_replaces_a_stale_folder(setup: Setup) -> None:
    torch_dir = _fake_torch(setup.tmp / "torch", VERSION_PY_CU130, CMAKE_NO_FLAG)
    final = setup.cache / "pylib" / "flash-attn" / ABI.folder
    (final / "flash_attn").mkdir(parents=True)  # a stale install without marker
    (final / "flash_attn" / "junk.py").write_text("")
    leftover = final.parent / f".tmp-{ABI.folder}-killed"  # a killed install's work folder
    leftover.mkdir()
    assert pythonpath_entry(setup.cache, ABI) is None

    wheel = build_wheel(setup.tmp / "wheels", ABI.wheel_name(VERSION))
    # a relative --cache-dir works and the printed PYTHONPATH is absolute
    proc = setup.run(wheel, cache=Path("cache"), TTS_TORCH_DIR=str(torch_dir))
    assert proc.returncode == 0, proc.stderr
    assert f"this pod's flash_attn ABI: {TAG}" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == f"PYTHONPATH={final}"
    assert _summary(proc.stdout)["installed"] is True
    assert not (final / "flash_attn" / "junk.py").exists()
    assert not leftover.exists()
    assert (final / ".complete").exists()
    assert setup.pip_runs() == 1


def test_a_wheel_from_the_bucket_logs_its_download_progress(
    setup: Setup, clean_s3: S3Server
) -> None:
    """The line the operator shows in FlashAttnReady while the init container runs."""
    wheel = build_wheel(setup.tmp / "wheels", ABI.wheel_name(VERSION))
    clean_s3.client().create_bucket(Bucket="wheels")
    clean_s3.client().upload_file(str(wheel), "wheels", f"flash-attn/{wheel.name}")
    setup.env.update({k: v for k, v in clean_s3.env().items() if k.startswith("AWS_")})
    proc = setup.run(
        f"s3://wheels/flash-attn/{wheel.name}", "--abi-tag", TAG, "--progress-interval", "3600"
    )
    assert proc.returncode == 0, proc.stderr
    fetched = [line for line in proc.stdout.splitlines() if line.startswith("fetch ")]
    assert fetched, proc.stdout
    assert fetched[-1].startswith(f"fetch {wheel.name}: ")
    assert "(100%)" in fetched[-1]
    assert _summary(proc.stdout)["installed"] is True


def test_mismatching_wheel_is_refused(setup: Setup) -> None:
    torch_dir = _fake_torch(setup.tmp / "torch", VERSION_PY_CU130, CMAKE_NO_FLAG)
    other = Abi(
        python="cp310" if PY != "cp310" else "cp312",
        torch="2.7",
        cuda="12",
        cxx11abi=True,
        platform=PLATFORM,
    )
    wheel = build_wheel(setup.tmp / "wheels", other.wheel_name(VERSION))
    proc = setup.run(wheel, TTS_TORCH_DIR=str(torch_dir))
    assert proc.returncode == PERMANENT_EXIT, "a wheel that does not fit never will"
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"error: install-flash-attn failed: flash_attn wheel {wheel.name} does not fit"
    )
    assert "it is built for torch 2.7, this pod has torch 2.11" in message
    assert message.endswith(f"this pod needs {ABI.wheel_name(VERSION)}")
    assert "PYTHONPATH=" not in proc.stdout
    assert setup.pip_runs() == 0
    assert not (setup.cache / "pylib" / "flash-attn" / ABI.folder).exists()


def test_sha256_mismatch_is_refused(setup: Setup) -> None:
    wheel = build_wheel(setup.tmp / "wheels", ABI.wheel_name(VERSION))
    proc = setup.run(wheel, "--abi-tag", TAG, "--sha256", "0" * 64)
    assert proc.returncode == PERMANENT_EXIT
    assert f"flash_attn wheel {wheel.name}: sha256 is " in proc.stderr
    assert f"expected {'0' * 64}" in proc.stderr
    assert setup.pip_runs() == 0
    folder = setup.cache / "pylib" / "flash-attn"
    assert [p.name for p in folder.iterdir()] == []  # no install, no work folder left

    bad = setup.run(wheel, "--abi-tag", TAG, "--sha256", "xyz")
    assert bad.returncode == 1
    assert "--sha256 'xyz' is not 64 hex digits" in bad.stderr


def test_wheel_that_does_not_import_is_refused(setup: Setup) -> None:
    wheel = build_wheel(setup.tmp / "wheels", ABI.wheel_name(VERSION), bert_padding=False)
    proc = setup.run(wheel, "--abi-tag", TAG)
    assert proc.returncode == 1
    assert f"flash_attn wheel {wheel.name} installed but does not import" in proc.stderr
    assert "bert_padding" in proc.stderr
    assert setup.pip_runs() == 1
    folder = setup.cache / "pylib" / "flash-attn"
    assert [p.name for p in folder.iterdir()] == []  # work folder cleaned, no marker


def test_missing_wheel_is_named(setup: Setup) -> None:
    proc = setup.run(setup.tmp / ABI.wheel_name(VERSION), "--abi-tag", TAG)
    assert proc.returncode == 1
    assert f"cannot read {setup.tmp / ABI.wheel_name(VERSION)}" in proc.stderr


@pytest.mark.parametrize("version_py", [VERSION_PY_CPU, VERSION_PY_ROCM])
def test_torch_without_cuda_installs_nothing(setup: Setup, version_py: str) -> None:
    torch_dir = _fake_torch(setup.tmp / "torch", version_py)
    wheel = build_wheel(setup.tmp / "wheels", ABI.wheel_name(VERSION))
    proc = setup.run(wheel, TTS_TORCH_DIR=str(torch_dir))
    assert proc.returncode == 0, proc.stderr
    assert (
        "this image's torch has no CUDA: flash_attn is not used, nothing installed" in proc.stdout
    )
    assert _summary(proc.stdout)["reason"] == "no-cuda"
    assert "PYTHONPATH=" not in proc.stdout
    assert setup.pip_runs() == 0
    assert not (setup.cache / "pylib").exists()


def test_baked_flash_attn_is_a_no_op(setup: Setup) -> None:
    wheel = build_wheel(setup.tmp / "wheels", ABI.wheel_name(VERSION))
    baked = setup.tmp / "site-packages"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(baked)
    proc = setup.run(wheel, PYTHONPATH=str(baked))
    assert proc.returncode == 0, proc.stderr
    assert "flash_attn already imports" in proc.stdout
    assert "nothing to install" in proc.stdout
    assert _summary(proc.stdout) == {
        "event": "flash-attn",
        "installed": False,
        "abiTag": None,
        "reason": "baked",
        "seconds": _summary(proc.stdout)["seconds"],
    }
    assert setup.pip_runs() == 0
    assert not setup.cache.exists()
