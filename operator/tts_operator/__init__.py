"""The tts-operator Kopf operator: reconciles TTSEndpoint and TTSJob resources."""

__version__ = "0.1.0"
