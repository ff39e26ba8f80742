"""The one way tts_inference imports f5_tts: without f5_tts/model/__init__.py's Trainer.

f5-tts's ``f5_tts/model/__init__.py`` imports every backbone and ``Trainer``
eagerly, and the trainer imports wandb and datasets (with pandas, pyarrow and
more behind them). Serving needs none of that: only ``f5_tts.model.cfm``,
``f5_tts.model.backbones.dit``, ``f5_tts.model.modules``, ``f5_tts.model.utils``
and ``f5_tts.infer.utils_infer``. The inference image leaves wandb and datasets
out (Dockerfiles/locks/inference-excluded.txt), so no import of f5_tts here may
run that ``__init__.py``.

``import_f5`` registers ``f5_tts.model`` as a plain package object first (the
installed package's own spec, ``__path__`` and ``__file__``, its ``__init__.py``
not executed), then imports the submodule asked for the ordinary way: the
classes and functions are the installed package's, unchanged. The package
object resolves the names ``__init__.py`` would have bound (``CFM``, ``DiT``,
``Trainer``, ...) on first access, from the submodule that defines them, so
``from f5_tts.model import CFM`` (as ``utils_infer`` does) and
``f5_tts.model.DiT`` (as ``f5_tts.api`` looks the backbone up) keep working in
the same process; only asking for ``Trainer`` imports the trainer, and with it
wandb. Where f5_tts.model was already imported normally (a user's process),
it is used as it is.

tests/inference/test_f5_contract.py checks ``EXPORTS`` against the installed
``__init__.py``; tests/chart/test_inference_image.py runs the server and
make-tiny-model with wandb and datasets absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

ROOT = "f5_tts"
MODEL_PACKAGE = "f5_tts.model"

#: The names f5_tts/model/__init__.py binds, and the submodule of f5_tts.model defining each.
EXPORTS: dict[str, str] = {
    "CFM": "cfm",
    "DiT": "backbones.dit",
    "MMDiT": "backbones.mmdit",
    "UNetT": "backbones.unett",
    "Trainer": "trainer",
}

_lock = threading.Lock()


def import_f5(name: str) -> ModuleType:
    """Import the f5_tts module ``name`` (e.g. ``f5_tts.model.cfm``) and return it.

    Importing it never executes ``f5_tts/model/__init__.py`` (and so never imports
    wandb or datasets) unless the process had already imported f5_tts.model.
    """
    if name != ROOT and not name.startswith(ROOT + "."):
        raise ValueError(f"{name!r} is not an f5_tts module")
    with _lock:
        if MODEL_PACKAGE not in sys.modules:
            # The spec is found without running the package: f5_tts itself is a
            # namespace package (no code), and find_spec does not execute the target.
            spec = importlib.util.find_spec(MODEL_PACKAGE)
            if spec is None or spec.submodule_search_locations is None:
                raise ModuleNotFoundError(f"No module named {MODEL_PACKAGE!r}", name=MODEL_PACKAGE)
            package = importlib.util.module_from_spec(spec)  # attributes set, code not run

            def resolve(attr: str) -> object:
                # PEP 562: called only for names the package object does not have yet.
                if attr not in EXPORTS:
                    raise AttributeError(f"module {MODEL_PACKAGE!r} has no attribute {attr!r}")
                value = getattr(importlib.import_module(f"{MODEL_PACKAGE}.{EXPORTS[attr]}"), attr)
                setattr(package, attr, value)
                return value

            # Set in the module's namespace, as a module-level __getattr__ and __all__ would be.
            vars(package).update(__getattr__=resolve, __all__=list(EXPORTS))
            sys.modules[MODEL_PACKAGE] = package
            # As the import system binds a loaded submodule on its parent package.
            vars(importlib.import_module(ROOT))["model"] = package
    return importlib.import_module(name)
