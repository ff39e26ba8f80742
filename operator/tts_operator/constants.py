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

# Labels every child carries (app.kubernetes.io conventions).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_KIND = f"{GROUP}/kind"

# Annotations the operator writes on children.
ANNOTATION_SPEC_HASH = f"{GROUP}/spec-hash"

COMPONENT_SERVER = "server"
#: Where a container leaves why it ended (Kubernetes' default terminationMessagePath).
TERMINATION_LOG = "/dev/termination-log"
COMPONENT_CACHE = "cache"
COMPONENT_JOB = "job"

# Condition types and reasons.
CACHE_READY = "CacheReady"
FLASH_ATTN_READY = "FlashAttnReady"
AVAILABLE = "Available"
CACHE_CLAIM_SIZED = "CacheClaimSized"

REASON_CACHE_SYNCING = "CacheSyncing"
REASON_CACHE_SYNCED = "CacheSynced"
REASON_CACHE_FAILED = "CacheSyncFailed"
REASON_FLASH_ATTN_DISABLED = "FlashAttnDisabled"
REASON_FLASH_ATTN_INSTALLING = "FlashAttnInstalling"
REASON_FLASH_ATTN_INSTALLED = "FlashAttnInstalled"
REASON_FLASH_ATTN_FAILED = "FlashAttnFailed"
REASON_WAITING_FOR_CACHE = "WaitingForCache"
REASON_SCALED_TO_ZERO = "ScaledToZero"
REASON_REPLICAS_READY = "ReplicasReady"
REASON_REPLICAS_NOT_READY = "ReplicasNotReady"
REASON_SERVER_FAILING = "ServerFailing"
# A TTSJob out of time: the Job controller's own reason, which a batch TTSJob passes on.
REASON_DEADLINE_EXCEEDED = "DeadlineExceeded"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_CLAIM_SIZE_MATCHES = "SizeMatches"
REASON_CLAIM_EXPANDING = "Expanding"
REASON_CLAIM_SHRINK_REFUSED = "ShrinkRefused"
REASON_CLAIM_EXPANSION_REFUSED = "ExpansionRefused"
REASON_CLAIM_EXISTING = "ExistingClaim"

# Phases.
PHASE_PENDING = "Pending"
PHASE_SYNCING = "Syncing"
PHASE_READY = "Ready"
PHASE_DEGRADED = "Degraded"
PHASE_FAILED = "Failed"
PHASE_RUNNING = "Running"
PHASE_SUCCEEDED = "Succeeded"

# Paths inside pods.
CACHE_MOUNT = "/cache"
RUN_MOUNT = "/run/tts"
MODEL_LINK = f"{RUN_MOUNT}/model"
SERVER_PORT = 8000

# The Prometheus that KEDA's triggers query, unless the operator is told another
# (kube-prometheus-stack's in-cluster service).
DEFAULT_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"

# The cache Job's containers: flash_attn's install (an init container), then the sync.
CONTAINER_INSTALL_FLASH_ATTN = "install-flash-attn"
CONTAINER_SYNC = "sync"
