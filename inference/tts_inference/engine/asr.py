"""Speech recognition for voice uploads without text: a Whisper model from the cache, lazily.

F5-TTS transcribes a reference with a transformers ASR pipeline (whisper-large-v3-turbo)
when no text is given. The server does the same, but only with a model folder
already in the cache volume (synced like the TTS model, e.g.
``/cache/models/whisper-large-v3-turbo/<digest>/`` with its ``.complete``
marker): it never downloads. The pipeline is built on the first upload that
needs it, once, so servers that never transcribe never pay for it; importing
this module imports neither torch nor transformers.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("tts_inference.engine.asr")

COMPLETE = ".complete"
#: Folder names under <cache>/models/ taken for an ASR model when none is named.
ASR_HINTS = ("whisper", "asr")


def _model_folder(path: Path) -> Path | None:
    """``path`` itself when it holds a model (config.json), else its newest complete revision."""
    if (path / "config.json").is_file():
        return path
    if not path.is_dir():
        return None
    revisions = [
        child
        for child in path.iterdir()
        if child.is_dir() and (child / COMPLETE).is_file() and (child / "config.json").is_file()
    ]
    if not revisions:
        return None
    return max(revisions, key=lambda child: (child / COMPLETE).stat().st_mtime)


def find_asr_model(cache_dir: Path | None, asr_model_dir: Path | None = None) -> Path | None:
    """The ASR model folder to use: ``asr_model_dir`` if given, else one found in the cache."""
    if asr_model_dir is not None:
        folder = _model_folder(asr_model_dir)
        if folder is None:
            log.warning("--asr-model-dir %s holds no complete model; ASR is off", asr_model_dir)
        return folder
    if cache_dir is None:
        return None
    models = cache_dir / "models"
    if not models.is_dir():
        return None
    for child in sorted(models.iterdir()):
        if any(hint in child.name.lower() for hint in ASR_HINTS):
            folder = _model_folder(child)
            if folder is not None:
                return folder
    return None


class WhisperTranscriber:
    """Callable (audio, sample_rate) -> text; loads the pipeline on first use, exactly once."""

    def __init__(self, model_dir: Path, device: str | None = None) -> None:
        self.model_dir = model_dir
        self.device = device
        self.loads = 0
        self._pipe: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        import torch
        from transformers import pipeline

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        log.info("loading the ASR model from %s on %s", self.model_dir, device)
        return pipeline(
            "automatic-speech-recognition", model=str(self.model_dir), dtype=dtype, device=device
        )

    def pipeline(self) -> Any:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._load()
                self.loads += 1
            return self._pipe

    def __call__(self, audio: npt.NDArray[np.float32], sample_rate: int) -> str:
        result = self.pipeline()(
            {"raw": np.asarray(audio, dtype=np.float32), "sampling_rate": sample_rate},
            chunk_length_s=30,
            generate_kwargs={"task": "transcribe"},
            return_timestamps=False,
        )
        return str(result["text"]).strip()
