"""Pure builders: each object for a table of specs, valid Kubernetes, commands the CLI accepts."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tts_inference.cli import build_parser
from tts_operator import constants as c
from tts_operator.builders import objects as b
from tts_operator.builders.meta import child_name, spec_hash

ROOT = Path(__file__).resolve().parents[2]
CONFIG = b.BuildConfig(image="registry.example/tts/inference:1.0")


def _supported_versions() -> list[str]:
    """Oldest and newest Kubernetes the chart supports (Chart.yaml's kubeVersion)."""
    chart = yaml.safe_load((ROOT / "charts" / "tts-operator" / "Chart.yaml").read_text())
    m = re.fullmatch(r">=(\d+)\.(\d+)\.0-0 <(\d+)\.(\d+)\.0-0", str(chart["kubeVersion"]).strip())
    assert m, chart["kubeVersion"]
    below = (int(m.group(3)), int(m.group(4)))
    newest = max(
        (v for v in all_versions() if tuple(map(int, v.split(".")[:2])) < below),
        key=lambda v: tuple(map(int, v.split("."))),
    )
    return [f"{m.group(1)}.{m.group(2)}.0", newest]


K8S_VERSIONS = _supported_versions()


def _example(name: str) -> dict[str, Any]:
    for path in (ROOT / "examples").glob("*.yaml"):
        for loaded in yaml.safe_load_all(path.read_text()):
            if loaded and loaded["metadata"]["name"] == name:
                doc = copy.deepcopy(loaded)
                doc["metadata"].update(
                    namespace="tts", uid="0b4c6f0e-5d4f-4a57-9a9e-000000000001", generation=3
                )
                return dict(doc)
    raise KeyError(name)


def endpoint(**spec_changes: Any) -> dict[str, Any]:
    ep = _example("f5tts")
    ep["spec"].update(spec_changes)
    return ep


ENDPOINTS = {
    "example": endpoint(),
    "existing-claim": endpoint(
        storage={"credentialsSecret": {"name": "b2"}, "cache": {"existingClaim": "shared"}}
    ),
    "flash-attn": endpoint(
        flashAttn={
            "enabled": True,
            "wheel": "s3://b/wheels/flash_attn-2.8.3+cu13torch2.11cxx11abiTRUE-cp311-cp311-linux_x86_64.whl",
            "sha256": "a" * 64,
        }
    ),
    "rwo-three-replicas": endpoint(replicas=3),
    "rwx-three-replicas": endpoint(
        replicas=3,
        storage={"credentialsSecret": {"name": "b2"}, "cache": {"accessModes": ["ReadWriteMany"]}},
    ),
    "api-key-and-cpu": endpoint(
        apiKeySecret={"name": "tts-key"}, resources={"gpus": 0, "requests": {"cpu": "2"}}
    ),
    "scaled-to-zero": endpoint(replicas=0),
}


def _all_objects(ep: dict[str, Any]) -> list[dict[str, Any]]:
    objs = [
        b.cache_job(ep, CONFIG),
        b.deployment(ep, CONFIG, cache_ready=True),
        b.service(ep),
        b.pod_disruption_budget(ep),
    ]
    pvc = b.cache_pvc(ep)
    return [*objs, *([pvc] if pvc else [])]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", sorted(ENDPOINTS))
def test_every_child_is_valid_kubernetes(case: str, version: str) -> None:
    for obj in _all_objects(ENDPOINTS[case]):
        kubernetes_validate.validate(obj, version, strict=True)


def batch(**spec_changes: Any) -> dict[str, Any]:
    job = _example("chapter-one")
    job["spec"].update(spec_changes)
    return job


def _spoken(text: str, voice: dict[str, str]) -> dict[str, Any]:
    job = batch(text=text, voice=voice)
    del job["spec"]["textFrom"]
    return job


BATCH_JOBS = {
    "one-pod": batch(),
    "three-parts": batch(parallelism=3),
    "three-parts-no-retries": batch(parallelism=3, backoffLimit=0),
    "max-parts": batch(parallelism=64, backoffLimit=10),
    "deadline": batch(parallelism=3, activeDeadlineSeconds=3600),
    # Free text that looks like a flag is still the text.
    "dash-text": _spoken(
        "-- and then, silence.",
        {"refAudio": "s3://my-tts-bucket/voices/narrator.wav", "refText": "-1 is where it starts."},
    ),
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", sorted(BATCH_JOBS))
def test_batch_job_is_valid_kubernetes(case: str, version: str) -> None:
    kubernetes_validate.validate(b.batch_job(BATCH_JOBS[case], CONFIG), version, strict=True)


def test_batch_job_with_parallelism_is_an_indexed_job_of_that_many_parts() -> None:
    job = b.batch_job(batch(parallelism=3, backoffLimit=2), CONFIG)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    # Each part retries on its own; one part out of retries fails the whole Job.
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (2, 0)
    assert spec["backoffLimit"] == 6
    command = _containers(spec["template"]["spec"])["run-job"]["command"]
    assert command[command.index("--part-count") + 1] == "3"
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("TTSJob", "chapter-one", True)


def _with_claim(parallelism: int) -> dict[str, Any]:
    job = batch(parallelism=parallelism)
    job["spec"]["storage"]["cache"] = {"existingClaim": "shared-cache"}
    return job


@pytest.mark.parametrize(
    ("parallelism", "modes", "one_node"),
    [
        (3, ["ReadWriteOnce"], True),
        (3, None, True),  # the claim is not there (yet): assume the narrowest
        (3, ["ReadWriteMany"], False),
        (3, ["ReadOnlyMany", "ReadWriteOnce"], False),
        (1, ["ReadWriteOnce"], False),
    ],
)
def test_parts_on_a_one_node_volume_are_kept_on_one_node(
    parallelism: int, modes: list[str] | None, one_node: bool
) -> None:
    built = b.batch_job(_with_claim(parallelism), CONFIG, modes)
    pod = built["spec"]["template"]["spec"]
    terms = pod.get("affinity", {}).get("podAffinity", {})
    if not one_node:
        assert not terms
        return
    (term,) = terms["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    # It matches this TTSJob's pods and no other TTSJob's.
    assert term["labelSelector"]["matchLabels"].items() <= pod_labels(built).items()
    other = b.batch_job(_other_job(), CONFIG, modes)
    assert not term["labelSelector"]["matchLabels"].items() <= pod_labels(other).items()
    kubernetes_validate.validate(built, K8S_VERSIONS[0], strict=True)


def pod_labels(job: dict[str, Any]) -> dict[str, str]:
    return dict(job["spec"]["template"]["metadata"]["labels"])


def _other_job() -> dict[str, Any]:
    job = _with_claim(3)
    job["metadata"]["name"] = "chapter-two"
    return job


def test_parts_without_a_claim_share_one_the_operator_makes_for_the_job() -> None:
    job = batch(parallelism=3)
    claim = b.batch_cache_pvc(job)
    assert claim is not None
    assert claim["metadata"]["name"] == "chapter-one-cache"
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "TTSJob"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    pod = b.batch_job(job, CONFIG)["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "cache") == {
        "name": "cache",
        "persistentVolumeClaim": {"claimName": "chapter-one-cache"},
    }
    # ReadWriteOnce: the parts share one node; ReadWriteMany lets them spread.
    assert "podAffinity" in pod["affinity"]
    rwx = batch(parallelism=3)
    rwx["spec"]["storage"]["cache"] = {
        "accessModes": ["ReadWriteMany"],
        "size": "40Gi",
        "storageClassName": "nfs",
    }
    rwx_claim = b.batch_cache_pvc(rwx)
    assert rwx_claim is not None
    assert rwx_claim["spec"]["resources"]["requests"]["storage"] == "40Gi"
    assert rwx_claim["spec"]["storageClassName"] == "nfs"
    assert rwx_claim["spec"]["accessModes"] == ["ReadWriteMany"]
    spread = b.batch_job(rwx, CONFIG)["spec"]["template"]["spec"]
    assert "podAffinity" not in spread.get("affinity", {})


def test_a_batch_deadline_is_the_jobs_own() -> None:
    assert (
        b.batch_job(batch(activeDeadlineSeconds=900), CONFIG)["spec"]["activeDeadlineSeconds"]
        == 900
    )
    assert "activeDeadlineSeconds" not in b.batch_job(batch(), CONFIG)["spec"]


def test_batch_job_of_one_part_stays_a_plain_job() -> None:
    for job in (batch(), batch(parallelism=1)):
        built = b.batch_job(job, CONFIG)
        spec = built["spec"]
        assert "completionMode" not in spec
        assert "backoffLimitPerIndex" not in spec
        assert spec["backoffLimit"] == 2
        assert "--part-count" not in _containers(spec["template"]["spec"])["run-job"]["command"]


@pytest.mark.parametrize("case", sorted(BATCH_JOBS))
def test_bad_input_fails_a_batch_job_at_once_and_evictions_are_free(case: str) -> None:
    spec = b.batch_job(BATCH_JOBS[case], CONFIG)["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert {
        "action": "FailJob",
        "onExitCodes": {"containerName": "run-job", "operator": "In", "values": [2]},
    } in rules
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    assert spec["podReplacementPolicy"] == "Failed"


@pytest.mark.parametrize("case", sorted(ENDPOINTS))
def test_children_are_owned_labelled_and_named_within_limits(case: str) -> None:
    ep = ENDPOINTS[case]
    for obj in _all_objects(ep):
        meta = obj["metadata"]
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "tts.f5tts.dev/v1alpha1",
            "kind": "TTSEndpoint",
            "name": "f5tts",
            "uid": ep["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["namespace"] == "tts"
        assert meta["labels"][c.LABEL_MANAGED_BY] == "tts-operator"
        assert meta["labels"][c.LABEL_INSTANCE] == "f5tts"
        assert len(meta["name"]) <= 63
        assert "kubectl.kubernetes.io/last-applied-configuration" not in meta.get("annotations", {})


def test_long_names_stay_unique_within_63_characters() -> None:
    a, b_ = child_name("x" * 70, "cache"), child_name("x" * 69 + "y", "cache")
    assert len(a) <= 63
    assert len(b_) <= 63
    assert a != b_


def _containers(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ct["name"]: ct for ct in pod_spec.get("initContainers", []) + pod_spec["containers"]}


@pytest.mark.parametrize("case", sorted(ENDPOINTS))
def test_command_lines_parse_with_the_real_cli(case: str) -> None:
    ep = ENDPOINTS[case]
    pods = [
        b.cache_job(ep, CONFIG)["spec"]["template"]["spec"],
        b.deployment(ep, CONFIG, cache_ready=True)["spec"]["template"]["spec"],
    ]
    for pod in pods:
        for ct in _containers(pod).values():
            argv = ct["command"]
            assert argv[0] == "tts-inference"
            args = build_parser(argv[1]).parse_args(argv[1:])
            assert args.command == argv[1]


def test_batch_job_command_names_the_documented_command() -> None:
    job = b.batch_job(_example("chapter-one"), CONFIG)
    containers = _containers(job["spec"]["template"]["spec"])
    assert containers["sync"]["command"][:2] == ["tts-inference", "sync"]
    assert containers["run-job"]["command"][:2] == ["tts-inference", "run-job"]
    assert "--text-uri" in containers["run-job"]["command"]


@pytest.mark.parametrize("case", sorted(BATCH_JOBS))
def test_batch_job_command_lines_parse_with_the_real_cli(case: str) -> None:
    job = BATCH_JOBS[case]
    pod = b.batch_job(job, CONFIG)["spec"]["template"]["spec"]
    for name, ct in _containers(pod).items():
        argv = ct["command"]
        assert argv[0] == "tts-inference"
        args = build_parser(argv[1]).parse_args(argv[1:])
        assert args.command == argv[1], name
    args = build_parser("run-job").parse_args(_containers(pod)["run-job"]["command"][1:])
    spec = job["spec"]
    assert args.part_count == b.batch_parts(job)
    assert (args.text, args.text_uri) == (spec.get("text"), spec.get("textFrom"))
    voice = spec.get("voice", {})
    assert (args.ref_audio, args.ref_text) == (voice.get("refAudio"), voice.get("refText"))
    assert args.output == spec["output"]["uri"]


def test_cache_job_requests_no_gpu_but_keeps_placement() -> None:
    ep = ENDPOINTS["flash-attn"]
    job = b.cache_job(ep, CONFIG)
    pod = job["spec"]["template"]["spec"]
    for ct in _containers(pod).values():
        assert "nvidia.com/gpu" not in json.dumps(ct.get("resources", {}))
    assert pod["nodeSelector"] == ep["spec"]["nodeSelector"]
    assert pod["tolerations"] == ep["spec"]["tolerations"]
    names = [ct["name"] for ct in pod.get("initContainers", [])] + [
        ct["name"] for ct in pod["containers"]
    ]
    assert names == ["install-flash-attn", "sync"]
    assert "--sha256" in _containers(pod)["install-flash-attn"]["command"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "f5tts-cache"


def test_deployment_runs_init_containers_then_serve_with_gpu_and_probes() -> None:
    ep = ENDPOINTS["flash-attn"]
    dep = b.deployment(ep, CONFIG, cache_ready=True)
    pod = dep["spec"]["template"]["spec"]
    assert [ct["name"] for ct in pod["initContainers"]] == ["install-flash-attn", "sync"]
    server = pod["containers"][0]
    assert server["command"][:2] == ["tts-inference", "serve"]
    assert server["command"][server["command"].index("--model-dir") + 1] == c.MODEL_LINK
    assert _containers(pod)["sync"]["command"][-2:] == ["--link", c.MODEL_LINK]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["image"] == CONFIG.image
    assert dep["spec"]["replicas"] == 1


def test_no_server_replica_before_the_cache_is_ready() -> None:
    assert b.deployment(ENDPOINTS["example"], CONFIG, cache_ready=False)["spec"]["replicas"] == 0
    assert (
        b.deployment(ENDPOINTS["rwx-three-replicas"], CONFIG, cache_ready=True)["spec"]["replicas"]
        == 3
    )


def test_credentials_reach_pods_only_as_env_from_the_secret() -> None:
    ep = ENDPOINTS["example"]
    for obj in _all_objects(ep):
        text = json.dumps(obj)
        assert "replace-with" not in text
        for ct in (
            _containers(obj["spec"]["template"]["spec"]).values()
            if "template" in obj.get("spec", {})
            else []
        ):
            env = {e["name"]: e for e in ct["env"]}
            for key in b.SECRET_KEYS:
                assert "value" not in env[key]
                assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "b2-credentials"


def test_rwo_volume_keeps_replicas_on_one_node_and_rwx_does_not() -> None:
    rwo = b.deployment(ENDPOINTS["rwo-three-replicas"], CONFIG, cache_ready=True)["spec"][
        "template"
    ]["spec"]
    terms = rwo["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms[0]["topologyKey"] == "kubernetes.io/hostname"
    rwx = b.deployment(ENDPOINTS["rwx-three-replicas"], CONFIG, cache_ready=True)["spec"][
        "template"
    ]["spec"]
    assert "podAffinity" not in rwx.get("affinity", {})


def test_existing_claim_makes_no_pvc_and_is_mounted() -> None:
    ep = ENDPOINTS["existing-claim"]
    assert b.cache_pvc(ep) is None
    vol = b.deployment(ep, CONFIG, cache_ready=True)["spec"]["template"]["spec"]["volumes"][0]
    assert vol["persistentVolumeClaim"]["claimName"] == "shared"


def test_api_key_reaches_the_server_from_its_secret() -> None:
    server = b.deployment(ENDPOINTS["api-key-and-cpu"], CONFIG, cache_ready=True)["spec"][
        "template"
    ]["spec"]["containers"][0]
    env = {e["name"]: e for e in server["env"]}
    assert env["TTS_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "tts-key", "key": "api-key"}
    assert "nvidia.com/gpu" not in json.dumps(server["resources"])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_voice_aliases_reach_the_server_the_endpoints_over_the_operators() -> None:
    config = b.BuildConfig(voice_aliases=(("alloy", "narrator"), ("echo", "anna")))
    ep = endpoint(voiceAliases={"alloy": "bob", "nova": "anna"})
    server = b.deployment(ep, config, cache_ready=True)["spec"]["template"]["spec"]
    assert _env(server["containers"][0])["TTS_VOICE_ALIASES"] == ("alloy=bob,echo=anna,nova=anna")
    # The server's own defaults (OpenAI's names to the built-in voice) need no env.
    bare = endpoint()
    bare["spec"].pop("voiceAliases", None)
    plain = b.deployment(bare, CONFIG, cache_ready=True)["spec"]["template"]["spec"]
    assert "TTS_VOICE_ALIASES" not in _env(plain["containers"][0])
    pod = b.batch_job(batch(), config)["spec"]["template"]["spec"]
    assert _env(pod["containers"][0])["TTS_VOICE_ALIASES"] == "alloy=narrator,echo=anna"


def test_spec_change_rolls_the_pods_and_nothing_else_does() -> None:
    ep = endpoint()
    base = b.deployment(ep, CONFIG, cache_ready=True)
    same = copy.deepcopy(ep)
    same["status"] = {"phase": "Ready"}
    same["metadata"]["annotations"] = {"note": "x"}
    same["metadata"]["generation"] = 9
    assert b.deployment(same, CONFIG, cache_ready=True) == base
    changed = endpoint(inference={"nfeStep": 16})
    new = b.deployment(changed, CONFIG, cache_ready=True)
    key = c.ANNOTATION_SPEC_HASH
    assert (
        new["spec"]["template"]["metadata"]["annotations"][key]
        != base["spec"]["template"]["metadata"]["annotations"][key]
    )
    assert "--nfe-step" in new["spec"]["template"]["spec"]["containers"][0]["command"]


def test_scaling_or_growing_the_cache_leaves_the_pod_template_alone() -> None:
    base = b.deployment(endpoint(replicas=1), CONFIG, cache_ready=True)
    for ep in (
        endpoint(replicas=3),
        endpoint(replicas=4),
        endpoint(
            storage={"credentialsSecret": {"name": "b2-credentials"}, "cache": {"size": "80Gi"}}
        ),
    ):
        assert (
            b.deployment(ep, CONFIG, cache_ready=True)["spec"]["template"]
            == base["spec"]["template"]
        )


def test_one_cache_job_per_volume_revision_wheel_and_secret_version() -> None:
    ep = endpoint()
    name = b.cache_job_name(ep, "1")
    assert b.cache_job_name(endpoint(replicas=5), "1") == name, "scaling does not need a new sync"
    assert (
        b.cache_job_name(
            endpoint(
                model={
                    "name": "F5TTS_v1_Base",
                    "source": "s3://my-tts-bucket/models/F5TTS_v1_Base/v2/",
                }
            ),
            "1",
        )
        != name
    )
    assert b.cache_job_name(ep, "2") != name, "a fixed Secret starts a fresh Job"


def test_service_and_pdb_select_the_server_pods() -> None:
    ep = endpoint()
    pod_labels = b.deployment(ep, CONFIG, cache_ready=True)["spec"]["template"]["metadata"][
        "labels"
    ]
    for selector in (
        b.service(ep)["spec"]["selector"],
        b.pod_disruption_budget(ep)["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    assert (
        b.endpoint_url(ep, "http://{service}.{namespace}.svc:{port}") == "http://f5tts.tts.svc:8000"
    )


def test_spec_hash_is_stable_and_order_free() -> None:
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})


@pytest.mark.parametrize(
    ("resources", "inference", "max_batch"),
    [
        ({}, {}, None),  # a GPU: the server's default batching
        ({"gpus": 0}, {}, None),  # a CPU: the server chooses for the CPU it finds
        ({"gpus": 0}, {"maxBatch": 4}, "4"),  # what the user sets wins
        ({"gpus": 2}, {"maxBatch": 16}, "16"),
    ],
)
def test_endpoints_leave_batching_to_the_server_unless_told(
    resources: dict[str, Any], inference: dict[str, Any], max_batch: str | None
) -> None:
    ep = endpoint(resources=resources, inference=inference)
    pod = b.deployment(ep, CONFIG, cache_ready=True)["spec"]["template"]["spec"]
    argv = _containers(pod)["server"]["command"]
    args = build_parser("serve").parse_args(argv[1:])
    assert argv.count("--max-batch") <= 1
    # None: the server's own default (8 on CUDA, its CPU plan on a CPU).
    assert args.max_batch == (None if max_batch is None else int(max_batch))


def test_a_cpu_endpoint_may_run_int8() -> None:
    ep = endpoint(resources={"gpus": 0}, inference={"dtype": "int8"})
    pod = b.deployment(ep, CONFIG, cache_ready=True)["spec"]["template"]["spec"]
    argv = _containers(pod)["server"]["command"]
    args = build_parser("serve").parse_args(argv[1:])
    assert (args.dtype, args.max_batch) == ("int8", None)
    default = b.deployment(endpoint(), CONFIG, cache_ready=True)["spec"]["template"]["spec"]
    assert (
        build_parser("serve").parse_args(_containers(default)["server"]["command"][1:]).dtype
        == "auto"
    )


def test_the_rollout_strategy_fits_the_claims_access_mode() -> None:
    rwo = b.deployment(endpoint(replicas=2), CONFIG, cache_ready=True)["spec"]["strategy"]
    # One node holds every pod: replace one at a time, never ask for a GPU beyond the endpoint's.
    assert rwo["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}
    rwx = b.deployment(
        endpoint(
            replicas=2,
            storage={
                "credentialsSecret": {"name": "b2"},
                "cache": {"accessModes": ["ReadWriteMany"]},
            },
        ),
        CONFIG,
        cache_ready=True,
    )["spec"]["strategy"]
    # Any node can mount it: a surge pod first, so no request goes unserved.
    assert rwx["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_a_server_asked_for_flash_attn_never_falls_back_and_says_why_it_stopped() -> None:
    def serve_args(ep: dict[str, Any]) -> Any:
        pod = b.deployment(ep, CONFIG, cache_ready=True)["spec"]["template"]["spec"]
        return build_parser("serve").parse_args(_containers(pod)["server"]["command"][1:])

    flash = ENDPOINTS["flash-attn"]
    assert serve_args(flash).attn_backend == "flash_attn"
    assert str(serve_args(flash).termination_log) == "/dev/termination-log"
    assert serve_args(endpoint()).attn_backend == "auto"  # not asked for: the server decides
    cpu = endpoint(flashAttn=flash["spec"]["flashAttn"], resources={"gpus": 0})
    assert serve_args(cpu).attn_backend == "auto"  # flash_attn needs CUDA
