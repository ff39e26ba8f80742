"""Pure builders: a TTSEndpoint or TTSJob in, Kubernetes objects out. No I/O, no clock.

The command lines written into pods are exactly the ones DESIGN.md fixes
(`tts-inference sync|install-flash-attn|serve|run-job`); a test parses them
with the real `tts-inference` argument parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tts_operator import constants as c
from tts_operator.builders.meta import Obj, child_name, metadata, selector_labels, spec_hash

SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")
OPTIONAL_SECRET_KEYS = {"AWS_ENDPOINT_URL", "AWS_REGION"}
DEFAULT_CACHE_SIZE = "20Gi"
VOICE_ALIASES_ENV = "TTS_VOICE_ALIASES"


@dataclass(frozen=True)
class BuildConfig:
    """Operator-wide settings the builders need."""

    image: str = "tts-operator/inference:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # Where KEDA's Prometheus triggers read the endpoints' queue depth.
    prometheus_url: str = c.DEFAULT_PROMETHEUS_URL
    # (alias, voice) pairs every server gets; an endpoint's spec.voiceAliases wins per alias.
    voice_aliases: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- shared pieces


def cache_claim_name(endpoint: Obj) -> str:
    cache = endpoint["spec"]["storage"].get("cache", {})
    return str(cache.get("existingClaim") or child_name(endpoint["metadata"]["name"], "cache"))


def access_modes(spec: Obj) -> list[str]:
    return list(spec["storage"].get("cache", {}).get("accessModes") or ["ReadWriteOnce"])


def credentials_env(secret: str) -> list[Obj]:
    """The bucket credentials, as env read from the Secret: never copied anywhere else."""
    return [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {
                    "name": secret,
                    "key": key,
                    **({"optional": True} if key in OPTIONAL_SECRET_KEYS else {}),
                }
            },
        }
        for key in SECRET_KEYS
    ]


# Seconds between the progress lines a cache Job's containers log (the operator reads them).
PROGRESS_INTERVAL = "10"


def sync_command(source: str, *, link: bool = True) -> list[str]:
    cmd = [
        "tts-inference",
        "sync",
        "--source",
        source,
        "--cache-dir",
        c.CACHE_MOUNT,
        "--progress-interval",
        PROGRESS_INTERVAL,
    ]
    if link:
        cmd += ["--link", c.MODEL_LINK]
    return cmd


def flash_attn_command(wheel: str, sha256: str | None) -> list[str]:
    cmd = [
        "tts-inference",
        "install-flash-attn",
        "--wheel",
        wheel,
        "--cache-dir",
        c.CACHE_MOUNT,
        "--progress-interval",
        PROGRESS_INTERVAL,
    ]
    if sha256:
        cmd += ["--sha256", sha256]
    return cmd


def flash_attn_init(spec: Obj, config: BuildConfig, secret: str) -> list[Obj]:
    """The install-flash-attn init container, when the spec enables flash_attn."""
    flash = spec.get("flashAttn", {})
    if not flash.get("enabled"):
        return []
    command = flash_attn_command(flash["wheel"], flash.get("sha256"))
    return [_container(c.CONTAINER_INSTALL_FLASH_ATTN, command, spec, config, secret)]


def _image(spec: Obj, config: BuildConfig) -> tuple[str, str]:
    return str(spec.get("image") or config.image), str(
        spec.get("imagePullPolicy") or config.image_pull_policy
    )


def _container(
    name: str, command: list[str], spec: Obj, config: BuildConfig, secret: str, **extra: Any
) -> Obj:
    image, pull = _image(spec, config)
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": pull,
        "command": command,
        "env": credentials_env(secret),
        "volumeMounts": [
            {"name": "cache", "mountPath": c.CACHE_MOUNT},
            {"name": "run", "mountPath": c.RUN_MOUNT},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **extra,
    }


def shared_by_nodes(modes: list[str]) -> bool:
    """Whether a volume with these access modes mounts on several nodes at once."""
    return "ReadWriteMany" in modes or "ReadOnlyMany" in modes


def _same_node(pod_spec: Obj, selector: dict[str, str]) -> None:
    """Require every pod matching ``selector`` on one node (the first one is free to pick)."""
    affinity = dict(pod_spec.get("affinity", {}))
    affinity["podAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {"matchLabels": dict(selector)},
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }
    pod_spec["affinity"] = affinity


def _volumes(claim: str | None) -> list[Obj]:
    cache: Obj = {"name": "cache"}
    if claim:
        cache["persistentVolumeClaim"] = {"claimName": claim}
    else:
        cache["emptyDir"] = {}
    return [cache, {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]


def _resources(spec: Obj, default_gpus: int = 1) -> Obj:
    res = spec.get("resources", {})
    gpus = int(res.get("gpus", default_gpus))
    requests = {k: str(v) for k, v in res.get("requests", {}).items()}
    limits = {k: str(v) for k, v in res.get("limits", {}).items()}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
        limits["nvidia.com/gpu"] = str(gpus)
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _placement(spec: Obj) -> Obj:
    """nodeSelector, tolerations and affinity, shared by the cache Job and the GPU pods."""
    out: Obj = {}
    if spec.get("nodeSelector"):
        out["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("tolerations"):
        out["tolerations"] = [dict(t) for t in spec["tolerations"]]
    if spec.get("affinity"):
        out["affinity"] = dict(spec["affinity"])
    return out


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


# --------------------------------------------------------------------------- TTSEndpoint


def cache_pvc(endpoint: Obj) -> Obj | None:
    """The cache claim, unless the endpoint names an existing one."""
    return _own_cache_claim(endpoint, cache_claim_name(endpoint))


def _own_cache_claim(parent: Obj, name: str) -> Obj | None:
    """The claim the operator makes from the parent's spec.storage.cache (size, class,
    access modes), owned by the parent; None when the parent names an existingClaim."""
    cache = parent["spec"]["storage"].get("cache", {})
    if cache.get("existingClaim"):
        return None
    spec: Obj = {
        "accessModes": access_modes(parent["spec"]),
        "resources": {"requests": {"storage": str(cache.get("size") or DEFAULT_CACHE_SIZE)}},
    }
    if cache.get("storageClassName"):
        spec["storageClassName"] = cache["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(parent, name, c.COMPONENT_CACHE),
        "spec": spec,
    }


def cache_key(endpoint: Obj, secret_version: str = "") -> str:
    """One cache Job per (volume, model revision, flash-attn wheel, credentials version).

    The Secret's resourceVersion is part of the key, so fixing a wrong key in the
    Secret starts a fresh Job without anyone deleting the failed one; on a warm
    cache that Job fetches nothing and ends in about a second.
    """
    spec = endpoint["spec"]
    flash = spec.get("flashAttn", {})
    wheel = flash.get("wheel") if flash.get("enabled") else None
    return spec_hash(
        cache_claim_name(endpoint),
        spec["model"]["source"],
        spec["model"].get("vocoderSource"),
        wheel,
        flash.get("sha256"),
        secret_version,
    )[:10]


def cache_job_name(endpoint: Obj, secret_version: str = "") -> str:
    return child_name(endpoint["metadata"]["name"], f"cache-{cache_key(endpoint, secret_version)}")


def cache_job(endpoint: Obj, config: BuildConfig, *, secret_version: str = "") -> Obj:
    """The Job that fills the cache once, on a node without a GPU request.

    It carries the endpoint's placement (everything but the GPU request), so a
    zonal or ReadWriteOnce volume it fills is one the GPU pods can mount. Its
    summary (bytes, seconds, digest) comes back through the termination message.
    """
    spec = endpoint["spec"]
    secret = spec["storage"]["credentialsSecret"]["name"]
    init = flash_attn_init(spec, config, secret)
    sync = _container(
        c.CONTAINER_SYNC,
        [
            *sync_command(spec["model"]["source"], link=False),
            "--termination-log",
            c.TERMINATION_LOG,
        ],
        spec,
        config,
        secret,
        resources={"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    )
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "securityContext": POD_SECURITY,
        "initContainers": init,
        "containers": [sync],
        "volumes": _volumes(cache_claim_name(endpoint)),
        **_placement(spec),
    }
    if not init:
        del pod_spec["initContainers"]
    meta = metadata(endpoint, cache_job_name(endpoint, secret_version), c.COMPONENT_CACHE)
    template = {"metadata": {"labels": dict(meta["labels"])}, "spec": pod_spec}
    # A Job's template cannot change: a different one (placement, image, resources)
    # replaces an unfinished Job; the hash says which template a Job was made from.
    meta["annotations"] = {c.ANNOTATION_SPEC_HASH: spec_hash(template)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 4,
            "activeDeadlineSeconds": 6 * 3600,
            # Access denied, a missing model or a wheel that does not fit fails at once
            # (exit 2); a network error is tried again.
            "podFailurePolicy": failure_policy(),
            "template": template,
        },
    }


def server_name(endpoint: Obj) -> str:
    return str(endpoint["metadata"]["name"])


def server_selector(endpoint: Obj) -> dict[str, str]:
    return selector_labels(endpoint["metadata"]["name"], c.COMPONENT_SERVER, endpoint["kind"])


def voice_aliases(spec: Obj, config: BuildConfig) -> str:
    """The server's voice aliases: the operator's, then the endpoint's own over them."""
    aliases = {**dict(config.voice_aliases), **spec.get("voiceAliases", {})}
    return ",".join(f"{alias}={voice}" for alias, voice in sorted(aliases.items()))


def serve_command(spec: Obj) -> list[str]:
    inference = spec.get("inference", {})
    cmd = [
        "tts-inference",
        "serve",
        "--model-dir",
        c.MODEL_LINK,
        "--cache-dir",
        c.CACHE_MOUNT,
        "--port",
        str(c.SERVER_PORT),
        "--termination-log",
        c.TERMINATION_LOG,
    ]
    if spec.get("flashAttn", {}).get("enabled") and int(spec.get("resources", {}).get("gpus", 1)):
        # Asked for, so never a silent fallback: a flash_attn that does not import stops the
        # server with the import error, which the endpoint's status then shows.
        cmd += ["--attn-backend", "flash_attn"]
    for key, flag in (
        ("nfeStep", "--nfe-step"),
        ("cfgStrength", "--cfg-strength"),
        ("maxBatch", "--max-batch"),
        ("maxWaitMs", "--max-wait-ms"),
        ("maxQueue", "--max-queue"),
        ("dtype", "--dtype"),
    ):
        if key in inference:
            cmd += [flag, str(inference[key])]
    # Nothing else is forced: the server chooses its dtype and batching for the device it
    # finds (on a CPU from the CPU's features, engine/cpu.py); spec.inference overrides.
    cmd += ["--model-name", str(spec["model"]["name"])]
    return cmd


def deployment(endpoint: Obj, config: BuildConfig, *, cache_ready: bool) -> Obj:
    """The GPU server pods; no replica runs before the cache is ready.

    Init containers run install-flash-attn (when enabled) and sync: on a ready
    cache they finish in about a second and fetch nothing. A hash of the pod
    template itself is annotated on it, so what changes the pods rolls them and
    nothing else does: scaling (spec.replicas) or growing the cache claim leaves
    the serving pods alone.
    """
    spec = endpoint["spec"]
    secret = spec["storage"]["credentialsSecret"]["name"]
    replicas = int(spec.get("replicas", 1)) if cache_ready else 0
    selector = server_selector(endpoint)
    init = flash_attn_init(spec, config, secret)
    init.append(
        _container(c.CONTAINER_SYNC, sync_command(spec["model"]["source"]), spec, config, secret)
    )
    env_extra: list[Obj] = []
    if spec.get("apiKeySecret"):
        ref = spec["apiKeySecret"]
        env_extra.append(
            {
                "name": "TTS_API_KEY",
                "valueFrom": {
                    "secretKeyRef": {"name": ref["name"], "key": ref.get("key", "api-key")}
                },
            }
        )
    if spec.get("voicesSource"):
        env_extra.append({"name": "TTS_VOICES_URI", "value": spec["voicesSource"]})
    if aliases := voice_aliases(spec, config):
        env_extra.append({"name": VOICE_ALIASES_ENV, "value": aliases})
    probe = {"httpGet": {"path": "/readyz", "port": "http"}}
    server = _container(
        "server",
        serve_command(spec),
        spec,
        config,
        secret,
        ports=[{"name": "http", "containerPort": c.SERVER_PORT, "protocol": "TCP"}],
        resources=_resources(spec),
        startupProbe={**probe, "periodSeconds": 5, "failureThreshold": 360},
        readinessProbe={**probe, "periodSeconds": 5, "failureThreshold": 2},
        livenessProbe={
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
    )
    server["env"] = server["env"] + env_extra
    pod_spec: Obj = {
        "securityContext": POD_SECURITY,
        "terminationGracePeriodSeconds": 60,
        "initContainers": init,
        "containers": [server],
        "volumes": _volumes(cache_claim_name(endpoint)),
        **_placement(spec),
    }
    if not shared_by_nodes(access_modes(spec)):
        # A ReadWriteOnce volume mounts on one node: keep every replica there (also with
        # one replica, so that scaling up does not change the template).
        _same_node(pod_spec, selector)
    template_labels = dict(metadata(endpoint, server_name(endpoint), c.COMPONENT_SERVER)["labels"])
    digest = spec_hash(template_labels, pod_spec)
    meta = metadata(
        endpoint, server_name(endpoint), c.COMPONENT_SERVER, {c.ANNOTATION_SPEC_HASH: digest}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": rollout_strategy(access_modes(spec)),
            "template": {
                "metadata": {
                    "labels": dict(meta["labels"]),
                    "annotations": {c.ANNOTATION_SPEC_HASH: digest},
                },
                "spec": pod_spec,
            },
        },
    }


def rollout_strategy(modes: list[str]) -> Obj:
    """How the server pods roll, by what the cache claim allows.

    A claim that mounts on several nodes (ReadWriteMany, ReadOnlyMany) rolls with a
    surge pod first: no request goes unserved, given one spare GPU anywhere. A
    ReadWriteOnce claim keeps every pod on one node, where a surge pod would need a
    spare GPU on that node (and on another node meets Multi-Attach): it replaces one
    pod at a time instead, with no GPU beyond the endpoint's own.
    """
    if shared_by_nodes(modes):
        return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}


def service(endpoint: Obj) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(endpoint, server_name(endpoint), c.COMPONENT_SERVER),
        "spec": {
            "type": "ClusterIP",
            "selector": server_selector(endpoint),
            "ports": [
                {"name": "http", "port": c.SERVER_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def pod_disruption_budget(endpoint: Obj) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(endpoint, server_name(endpoint), c.COMPONENT_SERVER),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": server_selector(endpoint)}},
    }


def service_monitor(endpoint: Obj) -> Obj:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(endpoint, server_name(endpoint), c.COMPONENT_SERVER),
        "spec": {
            "selector": {
                "matchLabels": server_selector(endpoint) | {c.LABEL_COMPONENT: c.COMPONENT_SERVER}
            },
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    }


# --------------------------------------------------------------------------- autoscaling

# The engines that can scale an endpoint on its queue depth.
AUTOSCALER_HPA = "hpa"
AUTOSCALER_KEDA = "keda"
QUEUE_METRIC = "tts_queue_depth"
PENDING_JOBS_METRIC = "tts_operator_endpoint_pending_jobs"
DEFAULT_TARGET_QUEUE_DEPTH = 4
SCALE_DOWN_WINDOW_S = 300


def _bounds(spec: Obj) -> tuple[int, int, int]:
    scaling = spec["autoscaling"]
    low = int(scaling.get("minReplicas", 1))
    return (
        low,
        int(scaling["maxReplicas"]),
        int(scaling.get("targetQueueDepth", DEFAULT_TARGET_QUEUE_DEPTH)),
    )


def horizontal_pod_autoscaler(endpoint: Obj) -> Obj:
    """autoscaling/v2 on the per-pod metric tts_queue_depth (through the custom metrics API).

    A HorizontalPodAutoscaler cannot go below one pod: minReplicas 0 needs KEDA.
    """
    low, high, target = _bounds(endpoint["spec"])
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(endpoint, server_name(endpoint), c.COMPONENT_SERVER),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": server_name(endpoint),
            },
            "minReplicas": max(low, 1),
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": QUEUE_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(target)},
                    },
                }
            ],
            # A GPU pod takes minutes to become warm: do not give one back at the first lull.
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S}},
        },
    }


def scaled_object(endpoint: Obj, config: BuildConfig) -> Obj:
    """A KEDA ScaledObject: Prometheus triggers on queue depth and on pending TTSJobs.

    With minReplicas 0 the endpoint sleeps when idle; a queued request or a pending
    TTSJob wakes it (activation at any value above 0).
    """
    low, high, target = _bounds(endpoint["spec"])
    ns, name = endpoint["metadata"]["namespace"], server_name(endpoint)
    pods = f'namespace="{ns}",pod=~"{name}-[a-z0-9]+-[a-z0-9]+"'
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(endpoint, name, c.COMPONENT_SERVER),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": low,
            "maxReplicaCount": high,
            "cooldownPeriod": SCALE_DOWN_WINDOW_S,
            # The HPA KEDA makes (one pod and up) gives pods back as slowly as ours does.
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S}}
                }
            },
            **(
                {"pollingInterval": int(polling)}
                if (polling := endpoint["spec"]["autoscaling"].get("pollingIntervalSeconds"))
                else {}
            ),
            "triggers": [
                {
                    "type": "prometheus",
                    "name": "queue-depth",
                    "metadata": {
                        "serverAddress": config.prometheus_url,
                        "query": f"sum({QUEUE_METRIC}{{{pods}}})",
                        "threshold": str(target),
                        "activationThreshold": "0",
                    },
                },
                {
                    "type": "prometheus",
                    "name": "pending-jobs",
                    "metadata": {
                        "serverAddress": config.prometheus_url,
                        "query": f'sum({PENDING_JOBS_METRIC}{{namespace="{ns}",endpoint="{name}"}})',
                        "threshold": str(target),
                        "activationThreshold": "0",
                    },
                },
            ],
        },
    }


def autoscaler(endpoint: Obj, config: BuildConfig, engine: str) -> Obj | None:
    """The endpoint's autoscaler on ``engine`` (hpa or keda), or None without spec.autoscaling."""
    if not endpoint["spec"].get("autoscaling"):
        return None
    if engine == AUTOSCALER_KEDA:
        return scaled_object(endpoint, config)
    return horizontal_pod_autoscaler(endpoint)


def endpoint_url(endpoint: Obj, template: str) -> str:
    return template.format(
        service=server_name(endpoint),
        namespace=endpoint["metadata"]["namespace"],
        port=c.SERVER_PORT,
    )


# --------------------------------------------------------------------------- TTSJob (batch)


def batch_job_name(job: Obj) -> str:
    return child_name(job["metadata"]["name"], "run")


def batch_claim_name(job: Obj) -> str:
    """The claim the job's pods mount: its existingClaim, or the one the operator makes."""
    cache = job["spec"]["storage"].get("cache", {})
    return str(cache.get("existingClaim") or child_name(job["metadata"]["name"], "cache"))


def batch_cache_pvc(job: Obj) -> Obj | None:
    """The job's own cache claim, synced once and shared by all its parts (None with an
    existingClaim). Owned by the TTSJob: it goes when the job does."""
    return _own_cache_claim(job, batch_claim_name(job))


def batch_parts(job: Obj) -> int:
    """How many pods share a batch TTSJob's text (spec.parallelism, at least 1)."""
    return max(int(job["spec"].get("parallelism") or 1), 1)


def run_job_command(job: Obj) -> list[str]:
    spec = job["spec"]
    cmd = ["tts-inference", "run-job", "--model-dir", c.MODEL_LINK, "--cache-dir", c.CACHE_MOUNT]
    # Free text goes as --flag=value, so a text that starts with "-" is never read as a flag.
    cmd += ["--text-uri", spec["textFrom"]] if spec.get("textFrom") else [f"--text={spec['text']}"]
    voice = spec.get("voice", {})
    if voice.get("refAudio"):
        cmd += ["--ref-audio", voice["refAudio"]]
        if voice.get("refText"):
            cmd += [f"--ref-text={voice['refText']}"]
    else:
        cmd += ["--voice", voice.get("name", "default")]
    output = spec["output"]
    cmd += [
        "--output",
        output["uri"],
        "--format",
        output.get("format", "wav"),
        "--job-id",
        f"{job['metadata']['namespace']}/{job['metadata']['name']}",
    ]
    params = spec.get("params", {})
    for key, flag in (
        ("speed", "--speed"),
        ("nfeStep", "--nfe-step"),
        ("cfgStrength", "--cfg-strength"),
        ("seed", "--seed"),
    ):
        if key in params:
            cmd += [flag, str(params[key])]
    parts = batch_parts(job)
    if parts > 1:
        # Each pod takes its share by JOB_COMPLETION_INDEX, which the Indexed Job sets.
        cmd += ["--part-count", str(parts)]
    return cmd


# The exit code of run-job, sync and install-flash-attn when no retry can help (bad
# input, access denied, a wheel that does not fit); 1 is anything else.
PERMANENT_EXIT = 2


def failure_policy(container: str | None = None) -> Obj:
    """A permanent failure fails the Job at once; an evicted or preempted pod does not count.

    ``container`` limits the exit-code rule to one container; None means any of the pod's
    containers, init containers included.
    """
    on_exit: Obj = {"operator": "In", "values": [PERMANENT_EXIT]}
    if container:
        on_exit = {"containerName": container, **on_exit}
    return {
        "rules": [
            {"action": "FailJob", "onExitCodes": on_exit},
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def batch_job(job: Obj, config: BuildConfig, claim_modes: list[str] | None = None) -> Obj:
    """A TTSJob without an endpoint: GPU pods with the same init containers and cache.

    With spec.parallelism N > 1 it is an Indexed Job of N completions, all running at
    once: each pod speaks its share of the text, and the one that finds every part
    uploaded joins them into the output. Each index is retried spec.backoffLimit times
    on its own (backoffLimitPerIndex, GA in 1.33, beta and on by default from 1.29);
    one index out of retries fails the Job (maxFailedIndexes 0), since the join needs
    every part. backoffLimit = N x spec.backoffLimit is what the per-index limits allow
    in all, so a cluster that drops the per-index fields still bounds the retries.

    The pods mount spec.storage.cache.existingClaim, or the claim the operator makes for
    the job (batch_cache_pvc), so the parts sync the model once between them.
    ``claim_modes`` are the access modes of the existingClaim (None when unknown): parts
    on a volume that mounts on one node only are kept on one node.
    """
    spec = job["spec"]
    secret = spec["storage"]["credentialsSecret"]["name"]
    claim = batch_claim_name(job)
    own = batch_cache_pvc(job)
    if own is not None:
        claim_modes = own["spec"]["accessModes"]
    init = [
        _container(c.CONTAINER_SYNC, sync_command(spec["model"]["source"]), spec, config, secret)
    ]
    runner = _container(
        "run-job",
        [*run_job_command(job), "--termination-log", c.TERMINATION_LOG],
        spec,
        config,
        secret,
        resources=_resources(spec),
    )
    if aliases := voice_aliases({}, config):
        runner["env"] = [*runner["env"], {"name": VOICE_ALIASES_ENV, "value": aliases}]
    meta = metadata(job, batch_job_name(job), c.COMPONENT_JOB)
    pod_spec: Obj = {
        "restartPolicy": "Never",
        "securityContext": POD_SECURITY,
        "initContainers": init,
        "containers": [runner],
        "volumes": _volumes(claim),
        **_placement(spec),
    }
    retries = int(spec.get("backoffLimit", 2))
    parts = batch_parts(job)
    if parts > 1 and claim and not shared_by_nodes(claim_modes or []):
        _same_node(pod_spec, meta["labels"])
    job_spec: Obj = {"backoffLimit": retries}
    if parts > 1:
        job_spec = {
            "completionMode": "Indexed",
            "completions": parts,
            "parallelism": parts,
            "backoffLimitPerIndex": retries,
            "maxFailedIndexes": 0,
            "backoffLimit": retries * parts,
        }
    if spec.get("activeDeadlineSeconds") is not None:
        # The Job controller keeps the clock: at the deadline it stops every pod and
        # fails the Job with reason DeadlineExceeded.
        job_spec["activeDeadlineSeconds"] = int(spec["activeDeadlineSeconds"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            **job_spec,
            # podFailurePolicy needs restartPolicy Never and replacement pods only
            # once the old one has failed (the only value it allows).
            "podFailurePolicy": failure_policy("run-job"),
            "podReplacementPolicy": "Failed",
            "template": {"metadata": {"labels": dict(meta["labels"])}, "spec": pod_spec},
        },
    }
