"""Run `tts-inference` as the inference image would: with the distributions the
image leaves out made absent.

    python -m tests.chart.blocked DIST[,DIST...] -- serve --model-dir ...

"Absent" is what a missing package looks like, not an import that raises: the
path finder is wrapped so that ``importlib.util.find_spec`` returns None and
``import`` raises ModuleNotFoundError for every module the distributions
install (and only those: namespace packages shared with kept distributions,
such as ``opentelemetry``, stay importable), and ``importlib.metadata`` no
longer finds them. Optional imports (``try: import wandb``) behave as in the
image; a hard import fails, which is the point.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata as md
import sys
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.utils import canonicalize_name


def _name(dist: md.Distribution) -> str:
    """The canonical name, from the .dist-info folder's name when there is one
    (reading every METADATA file on each lookup would make imports crawl)."""
    path = getattr(dist, "_path", None)
    if path is not None and str(path).endswith(".dist-info"):
        return canonicalize_name(Path(path).name.split("-")[0])
    return canonicalize_name(dist.metadata["Name"] or "")


def _module_paths(dist: md.Distribution) -> set[tuple[str, ...]]:
    """Dotted module paths (as tuples) a distribution installs, packages included."""
    out: set[tuple[str, ...]] = set()
    for f in dist.files or []:
        parts = str(f).split("/")
        if parts[0] == ".." or ".dist-info" in parts[0] or ".data" in parts[0]:
            continue
        name = parts[-1]
        if name.endswith((".py", ".so", ".pyd")) and "." not in name.split(".")[0]:
            stem = name.split(".")[0]
            out.add(tuple(parts[:-1] + ([] if stem == "__init__" else [stem])))
        elif len(parts) > 1:
            out.add(tuple(parts[:-1]))
    out.discard(())
    return out


def blocked_modules(dists: Collection[str]) -> set[str]:
    """The shortest module names owned only by ``dists`` (canonical distribution names)."""
    kept: set[tuple[str, ...]] = set()
    excluded: list[set[tuple[str, ...]]] = []
    for dist in md.distributions():
        paths = _module_paths(dist)
        if _name(dist) in dists:
            excluded.append(paths)
        else:
            kept.update(p[:i] for p in paths for i in range(1, len(p) + 1))
    out: set[str] = set()
    for paths in excluded:
        for path in paths:
            for i in range(1, len(path) + 1):
                if path[:i] not in kept:
                    out.add(".".join(path[:i]))
                    break
    return out


class _Absent(importlib.abc.MetaPathFinder):
    def __init__(self, inner: Any, modules: set[str], dists: Collection[str]) -> None:
        self.inner = inner
        self.modules = modules
        self.dists = dists
        self.misses: list[str] = []

    def _blocked(self, name: str) -> bool:
        parts = name.split(".")
        return any(".".join(parts[:i]) in self.modules for i in range(1, len(parts) + 1))

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if self._blocked(fullname):
            self.misses.append(fullname)
            return None
        spec: importlib.machinery.ModuleSpec | None = self.inner.find_spec(fullname, path, target)
        return spec

    def find_distributions(
        self, context: md.DistributionFinder.Context | None = None
    ) -> Iterable[md.Distribution]:
        found = self.inner.find_distributions(context or md.DistributionFinder.Context())
        return (d for d in found if _name(d) not in self.dists)

    def invalidate_caches(self) -> None:
        self.inner.invalidate_caches()


def install(dists: Collection[str]) -> set[str]:
    """Make ``dists`` absent in this process; returns the module names blocked."""
    names = {canonicalize_name(d) for d in dists}
    modules = blocked_modules(names)
    loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in modules))
    if loaded:
        raise RuntimeError(f"already imported before the blocker: {loaded}")
    sys.meta_path[:] = [
        _Absent(f, modules, names) if f is importlib.machinery.PathFinder else f
        for f in sys.meta_path
    ]
    return modules


def main(argv: Sequence[str]) -> int:
    if "--" not in argv:
        print("usage: python -m tests.chart.blocked DIST[,DIST...] -- ARGS", file=sys.stderr)
        return 2
    split = list(argv).index("--")
    dists = [d for arg in argv[:split] for d in arg.split(",") if d]
    install(dists)
    from tts_inference.cli import main as cli_main

    return cli_main(list(argv[split + 1 :]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
