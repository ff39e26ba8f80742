"""`tts-inference install-flash-attn`: install flash_attn for this pod's ABI into the cache, once.

Layout (DESIGN.md): ``<cache>/pylib/flash-attn/<abi-tag>/`` is a ``pip install
--target`` folder; its ``.complete`` marker is written last. The abi tag names
everything a flash_attn binary depends on, in the local version label that
flash-attn's release wheels carry, plus the Python tag:
``cu13torch2.11cxx11abiTRUE-cp311``.

Nothing here imports torch: its facts come from files (``torch/version.py``,
``TorchConfig.cmake``) and package metadata, read in the interpreter given by
``--python``, so the init container starts in well under a second and a warm
cache costs one small subprocess and one file read.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tts_inference.storage.bucket import PERMANENT_EXIT, PermanentStorageError, StorageError
from tts_inference.storage.files import file_lock, sha256_file, write_atomic, write_termination_log
from tts_inference.storage.progress import Progress

log = logging.getLogger("tts_inference.flash_attn")

__all__ = [
    "Abi",
    "WheelName",
    "add_arguments",
    "check_wheel_fits",
    "detect_abi",
    "parse_cmake_cxx11_abi",
    "parse_local_label",
    "parse_torch_version_py",
    "parse_wheel_name",
    "pythonpath_entry",
    "run",
]

COMPLETE = ".complete"
# Tests point detection at a fake torch folder with this; pods never set it.
TORCH_DIR_ENV = "TTS_TORCH_DIR"
IMPORT_CHECK = "import flash_attn, flash_attn.bert_padding; print(flash_attn.__file__)"

_LABEL = re.compile(r"^cu(?P<cuda>\d+)torch(?P<torch>\d+\.\d+)cxx11abi(?P<cxx11>TRUE|FALSE)$")
_TAG = re.compile(
    r"^cu(?P<cuda>\d+)torch(?P<torch>\d+\.\d+)cxx11abi(?P<cxx11>TRUE|FALSE)-(?P<python>[a-z]+\d+)$"
)
_CUDA_LINE = re.compile(
    r"""^cuda\s*(?::[^=\n]*)?=\s*(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)"|None)\s*$""", re.M
)
_VERSION_LINE = re.compile(r"""^__version__\s*(?::[^=\n]*)?=\s*['"](?P<v>[^'"]+)['"]""", re.M)
_CXX11_FLAG = re.compile(r"-D_GLIBCXX_USE_CXX11_ABI=(?P<v>[01])")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# Runs in the --python interpreter (and, by exec, in this one for pythonpath_entry):
# the facts the ABI needs, without importing torch or flash_attn.
PROBE = r"""
import importlib.metadata, importlib.util, json, sys, sysconfig

def facts():
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    flash_attn = importlib.util.find_spec("flash_attn")
    return {
        "python": "cp%d%d" % sys.version_info[:2],
        "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
        "torchDir": locations[0] if locations else None,
        "torchVersion": torch_version,
        "flashAttn": (flash_attn.origin or "a namespace package") if flash_attn else None,
    }

if __name__ == "__main__":
    print(json.dumps(facts()))
"""


# --------------------------------------------------------------------------- ABI


@dataclass(frozen=True)
class Abi:
    """What a flash_attn binary must match: Python, torch minor, CUDA major, C++ ABI, platform."""

    python: str  # cp311
    torch: str  # 2.11
    cuda: str | None  # 13; None for a CPU (or ROCm) torch
    cxx11abi: bool
    platform: str  # linux_x86_64

    @property
    def label(self) -> str:
        """The local version label of flash-attn's release wheels: cu13torch2.11cxx11abiTRUE."""
        return f"cu{self.cuda}torch{self.torch}cxx11abi{str(self.cxx11abi).upper()}"

    @property
    def tag(self) -> str:
        """The cache folder name: cu13torch2.11cxx11abiTRUE-cp311."""
        return f"{self.label}-{self.python}"

    @property
    def folder(self) -> str:
        """The cache folder name: the tag plus the platform, so x86_64 and aarch64
        pods sharing one ReadWriteMany volume never share an install."""
        return f"{self.tag}-{self.platform}"

    def wheel_name(self, version: str) -> str:
        """The release wheel of flash_attn ``version`` that fits this ABI."""
        return f"flash_attn-{version}+{self.label}-{self.python}-{self.python}-{self.platform}.whl"

    @classmethod
    def from_tag(cls, tag: str, platform: str) -> Abi:
        match = _TAG.match(tag)
        if not match:
            raise StorageError(
                f"--abi-tag {tag!r} is not of the form cu<CUDA major>torch<X.Y>cxx11abi<TRUE|FALSE>-cp<NN>, e.g. cu13torch2.11cxx11abiTRUE-cp311"
            )
        return cls(
            python=match["python"],
            torch=match["torch"],
            cuda=match["cuda"],
            cxx11abi=match["cxx11"] == "TRUE",
            platform=platform,
        )


def cuda_major(version: str) -> str:
    """'13.0' -> '13'; a label's digits: '12' -> '12', '118' -> '11', '130' -> '13'."""
    if "." in version:
        return version.split(".", 1)[0]
    return version if len(version) <= 2 else version[:-1]


def torch_minor(version: str) -> str:
    """'2.11.0+cu130' -> '2.11'."""
    match = re.match(r"^(\d+)\.(\d+)", version)
    if not match:
        raise StorageError(f"cannot read torch's version from {version!r}")
    return f"{match[1]}.{match[2]}"


def parse_torch_version_py(text: str) -> tuple[str | None, str | None]:
    """(``__version__``, ``cuda``) from the text of torch/version.py; cuda None for CPU builds."""
    version = _VERSION_LINE.search(text)
    cuda = _CUDA_LINE.search(text)
    cuda_value = (cuda["sq"] if cuda["sq"] is not None else cuda["dq"]) if cuda else None
    return (version["v"] if version else None), (cuda_value or None)


def parse_cmake_cxx11_abi(text: str | None, torch_version: str) -> bool:
    """Whether torch was built with the C++11 ABI, from TorchConfig.cmake's text.

    torch 2.7 and later no longer write the flag: all their PyPI wheels use the
    new ABI. Older releases always wrote it, so its absence there means the old one.
    """
    match = _CXX11_FLAG.search(text or "")
    if match:
        return match["v"] == "1"
    major, minor = (int(p) for p in torch_minor(torch_version).split("."))
    return (major, minor) >= (2, 7)


def detect_abi(
    torch_dir: Path, python: str, platform: str, torch_version: str | None = None
) -> Abi:
    """The ABI of the torch installed in ``torch_dir``, read from its files (never imported).

    ``torch_version`` (from package metadata) is used when version.py has no ``__version__``.
    """
    version_py = torch_dir / "version.py"
    try:
        text = version_py.read_text()
    except OSError as exc:
        raise StorageError(f"cannot read {version_py}: {exc.strerror or exc}") from None
    file_version, cuda = parse_torch_version_py(text)
    version = file_version or torch_version
    if not version:
        raise StorageError(f"no __version__ in {version_py} and no torch package metadata")
    cmake = torch_dir / "share" / "cmake" / "Torch" / "TorchConfig.cmake"
    try:
        cmake_text: str | None = cmake.read_text()
    except OSError:
        cmake_text = None
    return Abi(
        python=python,
        torch=torch_minor(version),
        cuda=cuda_major(cuda) if cuda else None,
        cxx11abi=parse_cmake_cxx11_abi(cmake_text, version),
        platform=platform,
    )


# --------------------------------------------------------------------------- wheel names


@dataclass(frozen=True)
class WheelName:
    version: str  # 2.8.3, without the local label
    label: str | None  # cu12torch2.7cxx11abiTRUE
    python: str  # cp311 (may be compound: cp311.cp312)
    abi: str  # cp311, abi3, none
    platform: str  # linux_x86_64 (may be compound)


def parse_wheel_name(filename: str) -> WheelName:
    """The fields of a flash_attn wheel's file name (PEP 427); StorageError for anything else."""
    name = os.path.basename(filename)
    if not name.endswith(".whl"):
        raise StorageError(f"{name!r} is not a wheel (expected a .whl file name)")
    parts = name[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise StorageError(
            f"{name!r} is not a wheel file name (expected NAME-VERSION-PYTHON-ABI-PLATFORM.whl)"
        )
    dist, full_version = parts[0], parts[1]
    python, abi, platform = parts[-3:]
    if re.sub(r"[-_.]+", "_", dist).lower() != "flash_attn":
        raise StorageError(f"{name!r} is a wheel of {dist!r}, not of flash_attn")
    version, _, label = full_version.partition("+")
    return WheelName(version, label or None, python, abi, platform)


def parse_local_label(label: str) -> tuple[str, str, bool]:
    """'cu12torch2.7cxx11abiTRUE' -> ('12', '2.7', True); StorageError for other labels."""
    match = _LABEL.match(label)
    if not match:
        raise StorageError(
            f"local version label {label!r} is not of the form cu<CUDA>torch<X.Y>cxx11abi<TRUE|FALSE>"
        )
    return cuda_major(match["cuda"]), match["torch"], match["cxx11"] == "TRUE"


def _platform_fits(wheel_platforms: str, platform: str) -> bool:
    if platform in wheel_platforms.split("."):
        return True
    arch = platform.split("_", 1)[1] if platform.startswith("linux_") else None
    return any(
        p == "any" or (arch is not None and p.startswith("manylinux") and p.endswith("_" + arch))
        for p in wheel_platforms.split(".")
    )


def check_wheel_fits(filename: str, abi: Abi) -> None:
    """Return when the wheel fits ``abi``; otherwise raise StorageError saying why and which would."""
    wheel = parse_wheel_name(filename)
    name = os.path.basename(filename)
    problems: list[str] = []
    pythons = wheel.python.split(".")
    if abi.python not in pythons and "py3" not in pythons:
        problems.append(f"it is for Python {wheel.python}, this pod runs {abi.python}")
    elif wheel.abi not in (abi.python, "abi3", "none"):
        problems.append(f"its Python ABI is {wheel.abi}, this pod runs {abi.python}")
    if not _platform_fits(wheel.platform, abi.platform):
        problems.append(f"it is for platform {wheel.platform}, this pod is {abi.platform}")
    # A wheel without a local label (built from source, or renamed) says nothing
    # about torch or CUDA: it is taken on trust when Python and platform match,
    # and the import check after the install is what catches a wrong build.
    if wheel.label is not None:
        try:
            cuda, torch, cxx11 = parse_local_label(wheel.label)
        except StorageError as exc:
            problems.append(str(exc))
        else:
            if torch != abi.torch:
                problems.append(f"it is built for torch {torch}, this pod has torch {abi.torch}")
            if cuda != abi.cuda:
                problems.append(
                    f"it is built for CUDA {cuda}, this pod's torch uses CUDA {abi.cuda}"
                )
            if cxx11 != abi.cxx11abi:
                problems.append(
                    f"it is built with cxx11abi{str(cxx11).upper()}, this pod's torch uses cxx11abi{str(abi.cxx11abi).upper()}"
                )
    if problems:
        raise PermanentStorageError(
            f"flash_attn wheel {name} does not fit this pod: {'; '.join(problems)}; "
            f"this pod needs {abi.wheel_name(wheel.version)}"
        )


# --------------------------------------------------------------------------- files


def target_dir(cache_dir: Path, abi_tag: str) -> Path:
    return cache_dir / "pylib" / "flash-attn" / abi_tag


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's ``.complete`` marker, or None when it is absent or unreadable."""
    try:
        data = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fetch_wheel(source: str, dest: Path, progress_interval: float = 0.0) -> None:
    """Copy the wheel at ``source`` (s3://bucket/key or a local path) to ``dest``; from a
    bucket, a progress line every ``progress_interval`` seconds (0: none)."""
    if source.startswith("s3://"):
        from tts_inference.storage.bucket import ObjectStore, S3Uri, make_client

        store = ObjectStore(lambda: make_client(max_pool=4))
        uri = S3Uri.parse(source)
        head = store.head(uri) if progress_interval > 0 else None
        if head is None:
            store.download_file(uri, str(dest))
            return
        with Progress(dest.name, head.size, progress_interval, sys.stdout, verb="fetch") as seen:
            store.download_file(uri, str(dest), on_bytes=seen.add)
        print(seen.line(), flush=True)
        return
    try:
        shutil.copyfile(source, dest)
    except OSError as exc:
        raise StorageError(f"cannot read {source}: {exc.strerror or exc}") from None


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- interpreter


def probe(python: str) -> dict[str, Any]:
    """Facts about ``python``'s environment (see PROBE), read without importing torch."""
    try:
        proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise StorageError(f"cannot run {python}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        raise StorageError(f"{python} failed to report its packages: {_tail(proc.stderr, 3)}")
    facts: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return facts


def local_facts() -> dict[str, Any]:
    """The PROBE facts of this interpreter, in process."""
    namespace: dict[str, Any] = {"__name__": "tts_inference.flash_attn.probe"}
    exec(PROBE, namespace)
    facts: dict[str, Any] = namespace["facts"]()
    return facts


def abi_from_facts(facts: dict[str, Any]) -> Abi | None:
    """This interpreter's ABI, or None when it has no torch."""
    torch_dir = os.environ.get(TORCH_DIR_ENV) or facts.get("torchDir")
    if not torch_dir:
        return None
    return detect_abi(
        Path(torch_dir), facts["python"], facts["platform"], facts.get("torchVersion")
    )


def import_check(python: str, pythonpath: Path | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p
        )
    try:
        return subprocess.run(
            [python, "-c", IMPORT_CHECK], capture_output=True, text=True, env=env, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"cannot run the import check with {python}: {exc}") from None


def pythonpath_entry(cache_dir: str | Path, abi: Abi | None = None) -> str | None:
    """The installed folder for this interpreter's ABI when its marker exists, else None."""
    if abi is None:
        try:
            abi = abi_from_facts(local_facts())
        except StorageError:
            return None
    if abi is None or abi.cuda is None:
        return None
    folder = target_dir(Path(cache_dir).absolute(), abi.folder)
    return str(folder) if read_marker(folder) is not None else None


def use_installed(cache_dir: str | Path) -> str | None:
    """Put the flash_attn an init container installed on sys.path (never pip here);
    the folder, or None when there is none for this interpreter's ABI."""
    entry = pythonpath_entry(cache_dir)
    if entry and entry not in sys.path:
        sys.path.insert(0, entry)
        log.info("flash_attn from the cache: %s", entry)
    return entry


# --------------------------------------------------------------------------- install


def _marker_matches(marker: dict[str, Any] | None, wheel: str, sha256: str | None) -> bool:
    if marker is None:
        return False
    return marker.get("wheel") == wheel and (sha256 is None or marker.get("sha256") == sha256)


def install(
    source: str,
    cache_dir: Path,
    abi: Abi,
    python: str,
    sha256: str | None,
    progress_interval: float = 0.0,
) -> bool:
    """Install the wheel into the cache once; True when this call did it, False when it was there."""
    wheel = os.path.basename(source.rstrip("/"))
    final = target_dir(cache_dir.absolute(), abi.folder)
    if _marker_matches(read_marker(final), wheel, sha256):
        return False
    check_wheel_fits(wheel, abi)
    with file_lock(
        cache_dir / ".locks" / f"flash-attn-{abi.folder}.lock",
        f"flash_attn {abi.tag}",
        sys.stdout,
        doing="installing",
    ):
        marker = read_marker(final)
        if _marker_matches(marker, wheel, sha256):
            print(f"another process installed {wheel} while this one waited", flush=True)
            return False
        if marker is not None:
            print(f"replacing {marker.get('wheel')} in {final} with {wheel}", flush=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Folders left by a killed install of this tag: we hold its lock, nobody uses them.
        for stale in final.parent.glob(f".tmp-{abi.folder}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{abi.folder}-", dir=final.parent))
        try:
            _install_into(source, wheel, work, final, abi, python, sha256, progress_interval)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return True


def _install_into(
    source: str,
    wheel: str,
    work: Path,
    final: Path,
    abi: Abi,
    python: str,
    sha256: str | None,
    progress_interval: float = 0.0,
) -> None:
    local = work / wheel
    started = time.monotonic()
    print(f"fetching {source}", flush=True)
    fetch_wheel(source, local, progress_interval)
    digest = sha256_file(local)
    print(
        f"fetched {wheel}: {local.stat().st_size} bytes, sha256 {digest} in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    if sha256 is not None and digest != sha256:
        raise PermanentStorageError(
            f"flash_attn wheel {wheel}: sha256 is {digest}, expected {sha256}"
        )
    site = work / "site"
    print(f"installing {wheel} with pip into {final}", flush=True)
    options = ["--no-deps", "--no-index", "--no-input", "--disable-pip-version-check"]
    command = [python, "-m", "pip", "install", *options, "--target", str(site), str(local)]
    pip = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if pip.returncode != 0:
        print(_tail(pip.stdout + "\n" + pip.stderr), file=sys.stderr, flush=True)
        raise StorageError(
            f"pip could not install flash_attn wheel {wheel} (exit {pip.returncode})"
        )
    check = import_check(python, site)
    imported = check.stdout.strip().splitlines()[-1] if check.stdout.strip() else ""
    if check.returncode != 0 or not Path(imported).resolve().is_relative_to(site.resolve()):
        print(_tail(check.stderr), file=sys.stderr, flush=True)
        reason = _tail(check.stderr, 1) or f"it imported from {imported}, not from the install"
        raise StorageError(f"flash_attn wheel {wheel} installed but does not import: {reason}")
    if final.exists():  # a stale install without marker, or another wheel's: set it aside
        os.rename(final, work / "old")
    os.rename(site, final)
    marker = {
        "wheel": wheel,
        "sha256": digest,
        "abiTag": abi.tag,
        "installedAt": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_atomic(final / COMPLETE, json.dumps(marker, indent=2).encode() + b"\n")


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wheel",
        required=True,
        metavar="URI",
        help="the flash_attn wheel: s3://bucket/wheels/FILE.whl or a local path",
    )
    parser.add_argument(
        "--cache-dir", required=True, type=Path, metavar="DIR", help="the cache volume, e.g. /cache"
    )
    parser.add_argument(
        "--sha256", metavar="HEX", help="the wheel's expected sha256; a mismatch is refused"
    )
    parser.add_argument(
        "--abi-tag",
        metavar="TAG",
        help="install for this ABI instead of the detected one, e.g. cu13torch2.11cxx11abiTRUE-cp311",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="the interpreter that will import flash_attn (default: this one)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        help="seconds between progress lines while the wheel downloads (0: none)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=os.environ.get("TTS_TERMINATION_LOG"),
        help="also write the JSON summary here (the operator reads /dev/termination-log)",
    )


def _report(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    line = json.dumps(summary)
    print(line, flush=True)
    write_termination_log(args.termination_log, line)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    sha256 = args.sha256.lower() if args.sha256 else None
    summary: dict[str, Any] = {"event": "flash-attn", "installed": False, "abiTag": None}
    try:
        if sha256 is not None and not _SHA256.match(sha256):
            raise StorageError(f"--sha256 {args.sha256!r} is not 64 hex digits")
        facts = probe(args.python)
        if facts.get("flashAttn"):
            check = import_check(args.python, None)
            if check.returncode == 0:
                print(f"flash_attn already imports in {args.python} (baked into the image)")
                print("nothing to install")
                summary.update(reason="baked", seconds=round(time.monotonic() - started, 3))
                _report(args, summary)
                return 0
            print(
                f"warning: {args.python} has a flash_attn that does not import: {_tail(check.stderr, 1)}",
                flush=True,
            )
        if args.abi_tag:
            abi = Abi.from_tag(args.abi_tag, facts["platform"])
        else:
            detected = abi_from_facts(facts)
            if detected is None:
                raise StorageError(
                    f"torch is not installed for {args.python}: cannot tell which flash_attn fits (pass --abi-tag)"
                )
            if detected.cuda is None:
                print("this image's torch has no CUDA: flash_attn is not used, nothing installed")
                summary.update(reason="no-cuda", seconds=round(time.monotonic() - started, 3))
                _report(args, summary)
                return 0
            abi = detected
        summary["abiTag"] = abi.tag
        print(f"this pod's flash_attn ABI: {abi.tag} ({abi.platform})", flush=True)
        installed = install(
            args.wheel, args.cache_dir, abi, args.python, sha256, args.progress_interval
        )
    except (StorageError, OSError, subprocess.SubprocessError) as exc:
        message = f"install-flash-attn failed: {exc}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        if args.termination_log:
            with contextlib.suppress(OSError):
                args.termination_log.write_text(
                    json.dumps({"event": "flash-attn-failed", "message": message})
                )
        return PERMANENT_EXIT if isinstance(exc, StorageError) and exc.permanent else 1
    folder = target_dir(args.cache_dir.absolute(), abi.folder)
    wheel = os.path.basename(args.wheel)
    print(f"{'installed' if installed else 'already installed:'} {wheel} in {folder}", flush=True)
    summary.update(
        installed=installed,
        wheel=wheel,
        path=str(folder),
        seconds=round(time.monotonic() - started, 3),
    )
    _report(args, summary)
    print(f"PYTHONPATH={folder}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tts-inference install-flash-attn")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
