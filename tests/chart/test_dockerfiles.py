"""The Dockerfiles, checked statically (no Docker engine here): they parse, pin
everything they install, run as a numeric non-root user, and start the console
scripts the operator writes into pods."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart import images
from tests.chart.images import Stage, env_of, load_stages, parse_dockerfile, run_commands

ROOT = images.ROOT
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
DOCKERFILES = {
    "operator": images.DOCKERFILES / "operator.Dockerfile",
    "inference": images.DOCKERFILES / "inference.Dockerfile",
}
# image -> (console script it runs, lock it installs, uid the pods run as)
EXPECTED = {
    "operator": ("tts-operator", "operator.txt"),
    "inference": ("tts-inference", "inference.txt"),
}


def _stages(image: str) -> list[Stage]:
    return load_stages(DOCKERFILES[image])


# --------------------------------------------------------------------------- the parser


def test_parser_joins_continuations_and_rejects_broken_files() -> None:
    ins = parse_dockerfile(
        'FROM a:1 AS b\n# c\nRUN x \\\n  # inside\n  && y\nENTRYPOINT ["p", "q"]\n'
    )
    assert [(i.keyword, i.value) for i in ins] == [
        ("FROM", "a:1 AS b"),
        ("RUN", "x && y"),
        ("ENTRYPOINT", '["p", "q"]'),
    ]
    assert ins[-1].exec_form() == ["p", "q"]
    for bad, message in [
        ("FORM a:1\n", "unknown instruction"),
        ("FROM a:1\nRUN x \\\n", "continuation"),
        ('FROM a:1\nENTRYPOINT ["p",\n', "Expecting"),
        ("RUN x\n", "before the first FROM"),
    ]:
        with pytest.raises(ValueError, match=message):
            images.stages(parse_dockerfile(bad))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_parses_into_named_build_and_final_stages(image: str) -> None:
    stages = _stages(image)
    assert len(stages) >= 2, "a build stage, then a final stage without build tools"
    assert stages[-1].name is None
    names = {s.name for s in stages if s.name}
    for stage in stages:
        for run in stage.all("RUN"):
            if run.exec_form() is None:  # shell form: /bin/sh -c must accept it
                check = subprocess.run(
                    ["sh", "-n", "-c", run.value], capture_output=True, text=True
                )
                assert check.returncode == 0, f"line {run.line}: {check.stderr}"
        for copy in stage.all("COPY"):
            source = copy.flags.get("from")
            if source is None:
                for src in copy.value.split()[:-1]:
                    assert list(ROOT.glob(src.rstrip("/"))), f"COPY {src}: not in the repository"
            else:
                assert source in names, f"COPY --from={source}: no such stage"


# --------------------------------------------------------------------------- pinning


def _external_bases(image: str) -> list[str]:
    stages = _stages(image)
    names = {s.name for s in stages if s.name}
    return [s.base for s in stages if s.base not in names]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_base_image_is_pinned_by_a_version_tag(image: str) -> None:
    for base in _external_bases(image):
        repo, _, tag = base.rpartition(":")
        assert repo, f"{base} has no tag"
        assert "/" not in tag, f"{base} has no tag"
        assert re.match(r"^\d+\.\d+\.\d+", tag), f"{base}: pin a full version, not {tag!r}"
        assert "$" not in base, f"{base}: a build argument is not a pin"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_no_base_image_names_a_registry_host(image: str) -> None:
    """Bases are named as the builder's configured registry (or its mirror) resolves them."""
    for base in _external_bases(image):
        first, slash, _ = base.partition("/")
        host = bool(slash) and (first == "localhost" or "." in first or ":" in first)
        assert not host, f"{base} names a registry host"


def test_inference_base_matches_the_pinned_torchs_cuda() -> None:
    lock = images.read_lock(images.LOCKS / "inference.txt")
    assert lock["torch"] == "2.11.0"
    cuda = ".".join(lock["nvidia-cuda-runtime"].split(".")[:2])  # torch 2.11.0 on PyPI: CUDA 13.0
    bases = [b for b in _external_bases("inference") if b.startswith("nvidia/cuda:")]
    assert bases, "the inference image is built on nvidia/cuda"
    for base in bases:
        tag = base.split(":")[1]
        assert tag.startswith(f"{cuda}."), base
        assert "-runtime-ubuntu" in tag, base


def _pip_installs(stage: Stage) -> list[list[str]]:
    out = []
    for words in run_commands(stage):
        if "pip" in words and "install" in words[words.index("pip") :]:
            pip = words.index("pip")
            out.append(words[words.index("install", pip) + 1 :])
    return out


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_package_install_is_pinned_by_a_lock(image: str) -> None:
    """pip/uv installs take --no-deps and only a lock, a hash-pinned file or the project's wheel."""
    locks = {p.name for p in images.LOCKS.glob("*.txt")}
    installs = [args for stage in _stages(image) for args in _pip_installs(stage)]
    assert installs
    lock_used = False
    for args in installs:
        assert "--no-deps" in args, args
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in ("-r", "--requirement"):
                path = args[i + 1]
                if path.startswith("/locks/"):
                    assert Path(path).name in locks, path
                    lock_used |= Path(path).name == EXPECTED[image][1]
                else:
                    assert "--require-hashes" in args, f"{path} is not a lock: require hashes"
                i += 2
                continue
            if arg == "--python":
                i += 2
                continue
            if not arg.startswith("-"):
                assert re.fullmatch(r"/wheels/tts_operator-\*\.whl", arg), (
                    f"unpinned install of {arg}"
                )
            i += 1
    assert lock_used, f"the {image} image does not install {EXPECTED[image][1]}"
    text = DOCKERFILES[image].read_text()
    assert "--build-constraint /locks/build.txt" in text or "-r /locks/build.txt" in text


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_system_packages_and_python_are_pinned(image: str) -> None:
    for stage in _stages(image):
        for words in run_commands(stage):
            if "apt-get" in words and "install" in words:
                packages = [w for w in words[words.index("install") + 1 :] if not w.startswith("-")]
                for package in packages:
                    assert re.fullmatch(r"[a-z0-9.+-]+=\S+", package), (
                        f"apt package {package} is not pinned"
                    )
            if words[:3] == ["uv", "python", "install"] or (words[:2] == ["uv", "venv"]):
                versions = [w for w in words if re.fullmatch(r"\d+\.\d+(\.\d+)?", w)]
                assert versions, words
                assert all(v.count(".") == 2 for v in versions), words
                assert all(
                    v.startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
                    for v in versions
                ), "the image's Python must be the minor version the locks were resolved with"
    for base in _external_bases(image):
        if base.startswith("python:"):
            assert base.split(":")[1].startswith(
                f"{sys.version_info.major}.{sys.version_info.minor}."
            )


def test_flash_attn_can_be_baked_in_only_pinned_by_its_hash() -> None:
    build = _stages("inference")[-2]
    args = {i.value.split("=")[0] for i in build.all("ARG")}
    assert {"FLASH_ATTN_WHEEL", "FLASH_ATTN_SHA256"} <= args
    (run,) = [i for i in build.all("RUN") if "FLASH_ATTN_WHEEL" in i.value]
    assert "--require-hashes" in run.value
    assert "--hash=sha256:$FLASH_ATTN_SHA256" in run.value
    assert "FLASH_ATTN_SHA256 must come with FLASH_ATTN_WHEEL" in run.value


# --------------------------------------------------------------------------- the locks


@pytest.mark.parametrize("extra", ["operator", "inference"])
def test_lock_pins_the_whole_closure_of_its_extra(extra: str) -> None:
    lock = images.read_lock(images.LOCKS / f"{extra}.txt")  # raises on an unpinned line
    skip = images.read_names(images.EXCLUDED_FILE) if extra == "inference" else set()
    needed = images.closure(extra, skip)
    missing = set(needed) - set(lock)
    extra_names = set(lock) - set(needed)
    stale = (
        f"Dockerfiles/locks/{extra}.txt is stale (missing {sorted(missing)}, not needed "
        f"{sorted(extra_names)}): run `python -m tests.chart.generate`"
    )
    assert not missing, stale
    assert not extra_names, stale
    # The versions locked satisfy the project's own requirements.
    for raw in (
        PYPROJECT["project"]["optional-dependencies"][extra] + PYPROJECT["project"]["dependencies"]
    ):
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"{name}=={lock[name]} breaks {raw}"
        )


def test_operator_image_has_no_torch_and_inference_image_no_left_out_package() -> None:
    operator = images.read_lock(images.LOCKS / "operator.txt")
    assert not {"torch", "torchaudio", "f5-tts", "boto3"} & set(operator)
    inference = images.read_lock(images.LOCKS / "inference.txt")
    assert not images.read_names(images.EXCLUDED_FILE) & set(inference)
    assert {"torch", "torchaudio", "f5-tts", "fastapi", "uvicorn", "boto3"} <= set(inference)
    build = images.read_lock(images.LOCKS / "build.txt")
    requires = PYPROJECT["build-system"]["requires"]
    assert {canonicalize_name(Requirement(r).name) for r in requires} == set(build)
    for raw in requires:
        req = Requirement(raw)
        assert req.specifier.contains(build[canonicalize_name(req.name)])


def test_locks_are_what_the_generator_writes_for_these_names() -> None:
    """Same names and layout as `python -m tests.chart.generate` writes (versions may
    differ from this venv's only where it resolved newer ones)."""
    for name, text in images.expected_locks().items():
        current = (images.LOCKS / name).read_text()
        assert current.splitlines()[:4] == text.splitlines()[:4], name


# --------------------------------------------------------------------------- running


def _user(image: str) -> tuple[int, int]:
    final = _stages(image)[-1]
    users = final.all("USER")
    assert users, f"the {image} image sets no USER: it would run as root"
    m = re.fullmatch(r"(\d+):(\d+)", users[-1].value.strip())
    assert m, f"USER {users[-1].value}: use numeric uid:gid, so runAsNonRoot can check it"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_images_run_as_a_numeric_non_root_user(image: str) -> None:
    uid, gid = _user(image)
    assert uid > 0
    assert gid > 0
    final = _stages(image)[-1]
    assert final.instructions.index(final.all("USER")[-1]) > max(
        final.instructions.index(i) for i in final.all("RUN") + final.all("COPY")
    ), "USER comes after every RUN and COPY of the final stage"


def test_pods_run_as_the_images_users() -> None:
    from tts_operator.builders.objects import POD_SECURITY

    values = yaml.safe_load((ROOT / "charts" / "tts-operator" / "values.yaml").read_text())
    assert values["operator"]["podSecurityContext"]["runAsUser"] == _user("operator")[0]
    assert values["operator"]["podSecurityContext"]["runAsGroup"] == _user("operator")[1]
    assert POD_SECURITY["runAsUser"] == _user("inference")[0]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_entrypoint_is_the_console_script(image: str) -> None:
    final = _stages(image)[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    command = entrypoint.exec_form()
    assert command is not None, "exec form, so signals reach the process"
    assert command == [EXPECTED[image][0]]
    assert command[0] in SCRIPTS
    path = env_of(final)["PATH"].split(":")
    assert path[0] == "/opt/venv/bin", "the venv's console scripts come first on PATH"
    assert any("/opt/venv" in i.value for i in final.all("COPY"))


def test_operator_pods_commands_are_console_scripts_of_the_inference_image() -> None:
    from tts_operator.builders import objects as b

    endpoint = yaml.safe_load((ROOT / "examples" / "10-ttsendpoint.yaml").read_text())
    endpoint["metadata"].update(namespace="tts", uid="0000")
    endpoint["spec"]["flashAttn"] = {
        "enabled": True,
        "wheel": "s3://b/wheels/flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
    }
    pod = b.deployment(endpoint, b.BuildConfig(), cache_ready=True)["spec"]["template"]["spec"]
    for container in pod["initContainers"] + pod["containers"]:
        assert container["command"][0] == EXPECTED["inference"][0], container["name"]


def test_inference_image_writes_only_under_tmp() -> None:
    """Read-only root filesystem: every cache a library writes points under /tmp,
    and bytecode is compiled at build time rather than written at run time."""
    env = env_of(_stages("inference")[-1])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    for key in (
        "HOME",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "MPLCONFIGDIR",
        "NUMBA_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
        "HF_HOME",
    ):
        assert env[key].startswith("/tmp"), key
    assert env_of(_stages("inference")[-2]).get("UV_COMPILE_BYTECODE") == "1"
    operator = env_of(_stages("operator")[-1])
    assert operator["HOME"] == "/tmp"
    assert operator["PYTHONDONTWRITEBYTECODE"] == "1"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_context_ignore_file_lets_in_what_copy_needs(image: str) -> None:
    ignore = (DOCKERFILES[image].parent / f"{DOCKERFILES[image].name}.dockerignore").read_text()
    allowed = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
    assert "*" in ignore.splitlines()
    for stage in _stages(image):
        for copy in stage.all("COPY"):
            if "from" in copy.flags:
                continue
            for src in copy.value.split()[:-1]:
                parts = Path(src.rstrip("/")).parts
                assert any("/".join(parts[:i]) in allowed for i in range(1, len(parts) + 1)), (
                    f"COPY {src} but the ignore file leaves it out"
                )
