"""What the images hold: a Dockerfile parser and the pinned package locks.

The locks under Dockerfiles/locks/ are what `pip install --no-deps` installs in
each image: the dependency closure of the project's extra (operator or
inference), read from the installed distributions' metadata, with exact
versions. The inference lock leaves out the training and UI packages f5-tts
declares but serving never imports (Dockerfiles/locks/inference-excluded.txt),
and every package only they need.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ROOT / "Dockerfiles"
LOCKS = DOCKERFILES / "locks"
EXCLUDED_FILE = LOCKS / "inference-excluded.txt"
PROJECT = "tts-operator"

# The build backend pyproject's [build-system] asks for, pinned.
BUILD_PINS = {"setuptools": "80.9.0", "wheel": "0.45.1"}


# --------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    value: str  # the arguments, continuation lines joined
    line: int  # 1-based line of the keyword
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        """The JSON array of ENTRYPOINT/CMD/RUN, or None in shell form."""
        text = self.value.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"line {self.line}: {self.keyword} is not a JSON array of strings")
        return value


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


KEYWORDS = {
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
}


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, backslash continuations joined.

    Raises ValueError for an unknown instruction or a continuation left open,
    which is what makes `docker build` refuse a file.
    """
    out: list[Instruction] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        start = i
        parts = [stripped]
        while parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1]
            # Comment lines inside a continued instruction are dropped, as Docker does.
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1
            if i >= len(lines):
                raise ValueError(f"line {start}: the instruction ends in a continuation")
            parts.append(lines[i].strip())
            i += 1
        joined = " ".join(p.strip() for p in parts if p.strip())
        keyword, _, rest = joined.partition(" ")
        keyword = keyword.upper()
        if keyword not in KEYWORDS:
            raise ValueError(f"line {start}: unknown instruction {keyword!r}")
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword in {"ENTRYPOINT", "CMD"} and rest.startswith("["):
            Instruction(keyword, rest, start).exec_form()  # must be valid JSON
        out.append(Instruction(keyword, rest, start, flags))
    return out


def stages(instructions: Iterable[Instruction]) -> list[Stage]:
    result: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3):
                raise ValueError(f"line {ins.line}: FROM takes IMAGE [AS NAME]")
            result.append(Stage(words[0], name, []))
        elif ins.keyword == "ARG" and not result:
            continue  # ARGs before the first FROM
        elif not result:
            raise ValueError(f"line {ins.line}: {ins.keyword} before the first FROM")
        else:
            result[-1].instructions.append(ins)
    if not result:
        raise ValueError("no FROM")
    return result


def load_stages(path: Path) -> list[Stage]:
    return stages(parse_dockerfile(path.read_text()))


def env_of(stage: Stage) -> dict[str, str]:
    """ENV key=value pairs of a stage, in order (later ones win)."""
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.value):
            key, sep, value = word.partition("=")
            if not sep:
                raise ValueError(f"line {ins.line}: write ENV as KEY=VALUE")
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def run_commands(stage: Stage) -> Iterator[list[str]]:
    """Each simple command of each RUN (split on && || ; |), as words; quotes respected."""
    operators = {"&&", "||", ";", "|", "&"}
    for ins in stage.all("RUN"):
        lexer = shlex.shlex(ins.value, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in lexer:
            if token in operators:
                if words:
                    yield words
                words = []
            else:
                words.append(token)
        if words:
            yield words


# --------------------------------------------------------------------------- locks


def read_names(path: Path) -> set[str]:
    names: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(line))
    return names


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of a lock file; every requirement must be name==version."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        if not m:
            raise ValueError(f"{path.name}:{n}: {line!r} is not pinned as name==version")
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _requires(dist: metadata.Distribution, extras: Iterable[str]) -> list[Requirement]:
    out = []
    wanted = [*extras, ""]
    for raw in dist.requires or []:
        req = Requirement(raw)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in wanted):
            out.append(req)
    return out


def closure(extra: str, skip: Collection[str] = ()) -> dict[str, str]:
    """name -> installed version of everything ``tts-operator[extra]`` needs here.

    Packages in ``skip`` are not entered, so what only they need stays out too.
    """
    seen: set[tuple[str, tuple[str, ...]]] = set()
    versions: dict[str, str] = {}
    stack = _requires(metadata.distribution(PROJECT), [extra])
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        if name in skip:
            continue
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(
                f"{name} (needed by tts-operator[{extra}]) is not installed in this venv"
            ) from exc
        versions[name] = dist.version
        stack.extend(_requires(dist, req.extras))
    return versions


def render_lock(title: str, pins: dict[str, str]) -> str:
    head = (
        f"# {title}\n"
        "# Generated by `python -m tests.chart.generate` from the installed distributions\n"
        "# (CPython 3.11, manylinux x86_64); installed with `pip install --no-deps`,\n"
        "# so nothing outside this list can enter the image. Do not edit by hand.\n"
    )
    return head + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def expected_locks() -> dict[str, str]:
    """File name under Dockerfiles/locks/ -> its content, from this venv."""
    excluded = read_names(EXCLUDED_FILE)
    return {
        "build.txt": render_lock("The build backend of the project's wheel.", BUILD_PINS),
        "operator.txt": render_lock(
            "The operator image: tts-operator[operator].", closure("operator")
        ),
        "inference.txt": render_lock(
            "The inference image: tts-operator[inference] less inference-excluded.txt.",
            closure("inference", excluded),
        ),
    }


def dropped_distributions() -> dict[str, str]:
    """What tts-operator[inference] would install that the inference image leaves out."""
    full = closure("inference")
    kept = closure("inference", read_names(EXCLUDED_FILE))
    return {name: version for name, version in full.items() if name not in kept}
