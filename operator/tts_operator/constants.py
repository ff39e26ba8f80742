"""Names shared by the operator's parts: API group, kinds, labels, annotations."""

from __future__ import annotations

GROUP = "tts.f5tts.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ENDPOINT_KIND = "TTSEndpoint"
ENDPOINT_PLURAL = "ttsendpoints"
JOB_KIND = "TTSJob"
JOB_PLURAL = "ttsjobs"

# Kopf's finalizer and its progress records live under the project's group.
FINALIZER = f"{GROUP}/finalizer"
ANNOTATIONS_PREFIX = GROUP

MANAGED_BY = "tts-operator"
