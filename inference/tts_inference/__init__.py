"""F5-TTS inference: warm-cache sync, flash_attn installer, server and jobs."""

__version__ = "0.1.0"
