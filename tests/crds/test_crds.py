"""The CRDs: valid Kubernetes objects, examples that apply, bad specs rejected by field."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tests.support import crdschema

ROOT = Path(__file__).resolve().parents[2]
CRDS = crdschema.load_crds()
K8S_VERSIONS = [all_versions()[0], all_versions()[-1]]


def _examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}#{i}", doc))
    return out


EXAMPLES = _examples()


def example(kind: str, name: str) -> dict[str, Any]:
    for _, doc in EXAMPLES:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return copy.deepcopy(doc)
    raise KeyError(name)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_is_a_valid_kubernetes_object_under_strict_validation(kind: str, version: str) -> None:
    kubernetes_validate.validate(CRDS[kind], version, strict=True)


def test_both_kinds_share_group_category_and_have_status_and_short_names() -> None:
    assert set(CRDS) == {"TTSEndpoint", "TTSJob"}
    for crd in CRDS.values():
        assert crd["spec"]["group"] == "tts.f5tts.dev"
        assert "tts" in crd["spec"]["names"]["categories"]
        assert crd["spec"]["names"]["shortNames"]
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1alpha1"
        assert "status" in version["subresources"]
        columns = {c["name"] for c in version["additionalPrinterColumns"]}
        assert {"Phase", "Age"} <= columns


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_is_typed_and_described(kind: str) -> None:
    schema = crdschema.openapi_schema(CRDS[kind])
    for path, node in _walk(schema, kind):
        if path == f"{kind}.metadata":
            continue
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path} has no type"
        scalar_item = path.endswith(("[]", "{}")) and node.get("type") != "object"
        if not scalar_item:
            assert node.get("description"), f"{path} has no description"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_schema_fields(kind: str) -> None:
    schema = crdschema.openapi_schema(CRDS[kind])
    for column in CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]:
        parts = re.sub(r"\[\?\(.*?\)\]", "[]", column["jsonPath"]).lstrip(".").split(".")
        if parts[0] == "metadata":
            continue
        node = schema
        for part in parts:
            name = part.split("[")[0]
            node = node["properties"][name]
            if "[" in part:
                node = node["items"]
        assert node, column


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_every_example_validates(name: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in CRDS:
        result = crdschema.validate(doc)
        assert result.ok, f"{name}: {result}"
    else:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_example_names_are_unique() -> None:
    """Tests find examples by name: two of one name would hand a test the wrong kind."""
    names = [doc["metadata"]["name"] for _, doc in EXAMPLES]
    assert len(names) == len(set(names)), sorted(names)


def test_examples_cover_both_kinds_and_both_job_modes() -> None:
    kinds = [doc["kind"] for _, doc in EXAMPLES]
    assert {"Secret", "TTSEndpoint", "TTSJob"} <= set(kinds)
    jobs = [doc for _, doc in EXAMPLES if doc["kind"] == "TTSJob"]
    assert any("endpointRef" in j["spec"] for j in jobs)
    assert any("model" in j["spec"] for j in jobs)
    secret = next(doc for _, doc in EXAMPLES if doc["kind"] == "Secret")
    assert set(secret["stringData"]) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    }


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _del(doc: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    del node[last]


DELETE = object()

# (case id, kind, example name, [(path, new value or DELETE)], text the error must contain)
BAD_SPECS: list[tuple[str, str, str, list[tuple[str, Any]], str]] = [
    ("missing-text", "TTSJob", "hello-on-endpoint", [("spec.text", DELETE)], "spec.text"),
    (
        "text-and-textFrom",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.textFrom", "s3://my-tts-bucket/t.txt")],
        "spec.textFrom",
    ),
    ("empty-text", "TTSJob", "hello-on-endpoint", [("spec.text", "")], "spec.text"),
    (
        "int8-on-a-gpu",
        "TTSEndpoint",
        "f5tts",
        [("spec.inference.dtype", "int8"), ("spec.resources.gpus", 1)],
        "int8 runs on CPUs only",
    ),
    ("unknown-dtype", "TTSEndpoint", "f5tts", [("spec.inference.dtype", "int4")], "dtype"),
    ("text-over-limit", "TTSJob", "hello-on-endpoint", [("spec.text", "a" * 100001)], "spec.text"),
    (
        "endpointRef-and-model",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.model", {"name": "F5TTS_v1_Base", "source": "s3://bucket/models/x/1/"})],
        "spec.endpointRef or spec.model",
    ),
    (
        "neither-endpointRef-nor-model",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.endpointRef", DELETE)],
        "spec.endpointRef or spec.model",
    ),
    (
        "batch-without-storage",
        "TTSJob",
        "chapter-one",
        [("spec.storage", DELETE)],
        "spec.storage is required",
    ),
    (
        "batch-field-on-endpoint-job",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.parallelism", 4)],
        "spec.storage, parallelism",
    ),
    (
        "nfeStep-zero",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.params.nfeStep", 0)],
        "spec.params.nfeStep",
    ),
    (
        "nfeStep-too-big",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.params.nfeStep", 65)],
        "spec.params.nfeStep",
    ),
    (
        "speed-over-four",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.params.speed", 4.5)],
        "spec.params.speed",
    ),
    (
        "speed-too-slow",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.params.speed", 0.2)],
        "spec.params.speed",
    ),
    (
        "unknown-field",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.texts", "typo")],
        'unknown field "spec.texts"',
    ),
    (
        "unknown-nested-field",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.output.bucket", "x")],
        "spec.output.bucket",
    ),
    (
        "seed-wrong-type",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.params.seed", "forty-two")],
        "spec.params.seed",
    ),
    ("text-wrong-type", "TTSJob", "hello-on-endpoint", [("spec.text", 42)], "spec.text"),
    (
        "output-not-s3",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.output.uri", "https://example.com/a.wav")],
        "spec.output.uri",
    ),
    (
        "output-local-path",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.output.uri", "/tmp/a.wav")],
        "spec.output.uri",
    ),
    ("output-missing", "TTSJob", "hello-on-endpoint", [("spec.output", DELETE)], "spec.output"),
    (
        "format-unknown",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.output.format", "aiff")],
        "spec.output.format",
    ),
    (
        "textFrom-not-s3",
        "TTSJob",
        "chapter-one",
        [("spec.textFrom", "http://x/y.txt")],
        "spec.textFrom",
    ),
    (
        "voice-name-and-refAudio",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.voice.refAudio", "s3://bucket/v/a.wav")],
        "spec.voice.name or spec.voice.refAudio",
    ),
    (
        "voice-empty",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.voice", {})],
        "spec.voice.name or spec.voice.refAudio",
    ),
    (
        "refText-without-refAudio",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.voice.refText", "hi")],
        "spec.voice.refText",
    ),
    (
        "voice-path-traversal",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.voice.name", "../etc")],
        "spec.voice.name",
    ),
    (
        "backoff-negative",
        "TTSJob",
        "hello-on-endpoint",
        [("spec.backoffLimit", -1)],
        "spec.backoffLimit",
    ),
    ("replicas-negative", "TTSEndpoint", "f5tts", [("spec.replicas", -1)], "spec.replicas"),
    ("replicas-wrong-type", "TTSEndpoint", "f5tts", [("spec.replicas", "two")], "spec.replicas"),
    (
        "endpoint-nfeStep-zero",
        "TTSEndpoint",
        "f5tts",
        [("spec.inference.nfeStep", 0)],
        "spec.inference.nfeStep",
    ),
    (
        "endpoint-speed-is-per-request",
        "TTSEndpoint",
        "f5tts",
        [("spec.inference.speed", 1.0)],
        'unknown field "spec.inference.speed"',
    ),
    (
        "alias-of-default",
        "TTSEndpoint",
        "f5tts",
        [("spec.voiceAliases", {"default": "narrator"})],
        "built-in voice's own name",
    ),
    (
        "alias-bad-name",
        "TTSEndpoint",
        "f5tts",
        [("spec.voiceAliases", {"../x": "narrator"})],
        "an alias is 1 to 64 letters",
    ),
    (
        "alias-bad-voice",
        "TTSEndpoint",
        "f5tts",
        [("spec.voiceAliases", {"alloy": "a/b"})],
        "spec.voiceAliases.alloy",
    ),
    (
        "endpoint-unknown-field",
        "TTSEndpoint",
        "f5tts",
        [("spec.gpu", 1)],
        'unknown field "spec.gpu"',
    ),
    ("model-missing", "TTSEndpoint", "f5tts", [("spec.model", DELETE)], "spec.model"),
    (
        "model-source-not-a-uri",
        "TTSEndpoint",
        "f5tts",
        [("spec.model.source", "F5TTS_v1_Base")],
        "spec.model.source",
    ),
    (
        "model-name-path",
        "TTSEndpoint",
        "f5tts",
        [("spec.model.name", "../../etc")],
        "spec.model.name",
    ),
    (
        "secret-missing",
        "TTSEndpoint",
        "f5tts",
        [("spec.storage.credentialsSecret", DELETE)],
        "spec.storage.credentialsSecret",
    ),
    (
        "existingClaim-and-size",
        "TTSEndpoint",
        "f5tts",
        [("spec.storage.cache.existingClaim", "my-pvc")],
        "spec.storage.cache.existingClaim excludes",
    ),
    (
        "cache-size-garbage",
        "TTSEndpoint",
        "f5tts",
        [("spec.storage.cache.size", "lots")],
        "spec.storage.cache.size",
    ),
    (
        "access-mode-unknown",
        "TTSEndpoint",
        "f5tts",
        [("spec.storage.cache.accessModes", ["ReadWriteAll"])],
        "spec.storage.cache.accessModes[0]",
    ),
    (
        "flashattn-without-wheel",
        "TTSEndpoint",
        "f5tts",
        [("spec.flashAttn", {"enabled": True})],
        "spec.flashAttn.wheel is required",
    ),
    (
        "flashattn-wheel-not-whl",
        "TTSEndpoint",
        "f5tts",
        [("spec.flashAttn.wheel", "s3://my-tts-bucket/wheels/flash.tar.gz")],
        "spec.flashAttn.wheel",
    ),
    (
        "flashattn-bad-sha",
        "TTSEndpoint",
        "f5tts",
        [("spec.flashAttn.sha256", "XYZ")],
        "spec.flashAttn.sha256",
    ),
    ("gpus-two", "TTSEndpoint", "f5tts", [("spec.resources.gpus", 2)], "spec.resources.gpus"),
    (
        "autoscaling-min-over-max",
        "TTSEndpoint",
        "f5tts",
        [("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2})],
        "spec.autoscaling.minReplicas must not exceed",
    ),
    (
        "toleration-bad-effect",
        "TTSEndpoint",
        "f5tts",
        [("spec.tolerations", [{"key": "k", "effect": "Sometimes"}])],
        "spec.tolerations[0].effect",
    ),
    (
        "job-existingClaim-and-size",
        "TTSJob",
        "chapter-one",
        [("spec.storage.cache", {"existingClaim": "shared", "size": "40Gi"})],
        "existingClaim excludes size",
    ),
    (
        "nodeSelector-not-strings",
        "TTSEndpoint",
        "f5tts",
        [("spec.nodeSelector", {"gpu": True})],
        "spec.nodeSelector.gpu",
    ),
]


@pytest.mark.parametrize(
    ("kind", "name", "changes", "needle"),
    [case[1:] for case in BAD_SPECS],
    ids=[case[0] for case in BAD_SPECS],
)
def test_bad_spec_is_rejected_with_a_message_naming_the_field(
    kind: str, name: str, changes: list[tuple[str, Any]], needle: str
) -> None:
    doc = example(kind, name)
    for path, value in changes:
        if value is DELETE:
            _del(doc, path)
        else:
            _set(doc, path, value)
    result = crdschema.validate(doc)
    assert not result.ok, "accepted a bad spec"
    assert any(needle in err for err in result.errors), result.errors


def _update(kind: str, name: str, path: str, value: Any) -> crdschema.Result:
    old = example(kind, name)
    new = copy.deepcopy(old)
    _set(new, path, value)
    return crdschema.validate(new, old=old)


# (kind, example name, field, new value, text the error must contain; None: accepted)
IMMUTABLE_UPDATES: list[tuple[str, str, str, Any, str | None]] = [
    ("TTSEndpoint", "f5tts", "spec.model.name", "OtherModel", "spec.model.name is immutable"),
    ("TTSEndpoint", "f5tts", "spec.storage.cache.storageClassName", "fast", None),
    (
        "TTSEndpoint",
        "f5tts",
        "spec.storage.cache.accessModes",
        ["ReadWriteMany"],
        "accessModes is immutable",
    ),
    ("TTSJob", "hello-on-endpoint", "spec.text", "Something else.", "spec is immutable"),
    ("TTSJob", "hello-on-endpoint", "spec.output.uri", "s3://other/x.wav", "spec is immutable"),
]


@pytest.mark.parametrize(("kind", "name", "path", "value", "needle"), IMMUTABLE_UPDATES)
def test_immutable_fields_reject_updates(
    kind: str, name: str, path: str, value: Any, needle: str | None
) -> None:
    result = _update(kind, name, path, value)
    if needle is None:
        # storageClassName was unset: setting it later is an add, which the
        # transition rule (scoped to the field) does not see, so it is allowed.
        assert result.ok, result
    else:
        assert not result.ok
        assert any(needle in err for err in result.errors), result.errors


def test_storage_class_change_is_rejected_once_set() -> None:
    old = example("TTSEndpoint", "f5tts")
    old["spec"]["storage"]["cache"]["storageClassName"] = "standard"
    new = copy.deepcopy(old)
    new["spec"]["storage"]["cache"]["storageClassName"] = "fast"
    result = crdschema.validate(new, old=old)
    assert any("storageClassName is immutable" in e for e in result.errors), result.errors


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.replicas", 3),
        ("spec.model.source", "s3://my-tts-bucket/models/F5TTS_v1_Base/v2/"),
        ("spec.storage.cache.size", "40Gi"),
    ],
)
def test_mutable_endpoint_fields_accept_updates(path: str, value: Any) -> None:
    result = _update("TTSEndpoint", "f5tts", path, value)
    assert result.ok, result


def test_status_updates_do_not_trip_the_job_spec_immutability_rule() -> None:
    old = example("TTSJob", "hello-on-endpoint")
    new = copy.deepcopy(old)
    new["status"] = {"phase": "Running", "attempts": 1}
    assert crdschema.validate(new, old=old).ok


def test_every_cel_rule_is_exercised_by_a_failing_case() -> None:
    """A rule nobody ever saw fail is a rule nobody knows works."""
    seen: set[str] = set()
    for _, kind, name, changes, _ in BAD_SPECS:
        doc = example(kind, name)
        for path, value in changes:
            _del(doc, path) if value is DELETE else _set(doc, path, value)
        seen.update(crdschema.validate(doc).errors)
    for args in [
        ("TTSEndpoint", "f5tts", "spec.model.name", "Other"),
        ("TTSEndpoint", "f5tts", "spec.storage.cache.accessModes", ["ReadWriteMany"]),
        ("TTSJob", "hello-on-endpoint", "spec.text", "x"),
    ]:
        seen.update(_update(*args).errors)
    old = example("TTSEndpoint", "f5tts")
    old["spec"]["storage"]["cache"] = {"existingClaim": "a"}
    new = copy.deepcopy(old)
    new["spec"]["storage"]["cache"]["existingClaim"] = "b"
    seen.update(crdschema.validate(new, old=old).errors)
    new["spec"]["storage"]["cache"] = {"size": "10Gi"}
    seen.update(crdschema.validate(new, old=old).errors)
    old["spec"]["storage"]["cache"] = {"storageClassName": "a"}
    new["spec"]["storage"]["cache"] = {"storageClassName": "b"}
    seen.update(crdschema.validate(new, old=old).errors)

    for kind, crd in CRDS.items():
        for _, rule in crdschema.cel_rules(crdschema.openapi_schema(crd)):
            assert any(rule["message"] in err for err in seen), (
                f"{kind}: rule never failed: {rule['rule']}"
            )


def test_cel_rules_accept_every_example_and_valid_alternatives() -> None:
    job = example("TTSJob", "chapter-one")
    job["spec"]["voice"] = {"name": "narrator"}
    assert crdschema.validate(job).ok
    endpoint = example("TTSEndpoint", "f5tts")
    endpoint["spec"]["storage"]["cache"] = {"existingClaim": "shared-cache"}
    endpoint["spec"]["flashAttn"] = {
        "enabled": True,
        "wheel": "s3://my-tts-bucket/wheels/flash_attn-2.8.3-cp311-cp311-linux_x86_64.whl",
    }
    endpoint["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4}
    assert crdschema.validate(endpoint).ok
    cpu = example("TTSEndpoint", "f5tts")
    cpu["spec"]["resources"] = {"gpus": 0}
    cpu["spec"]["inference"] = {"dtype": "int8"}
    assert crdschema.validate(cpu).ok


def test_chart_crds_equal_the_source_crds() -> None:
    chart_crds = ROOT / "charts" / "tts-operator" / "crds"
    source = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_text() for p in chart_crds.glob("*.yaml")}
    assert chart == source, "charts/tts-operator/crds differs from crds/: run `make crds`"


def test_crd_reference_covers_every_field_and_is_current() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gen_crd_reference", ROOT / "scripts" / "gen_crd_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    committed = (ROOT / "docs" / "crd-reference.md").read_text()
    assert committed == gen.render(), "docs/crd-reference.md is stale: run `make docs`"
    for kind, crd in CRDS.items():
        for path, _, _ in gen.fields(crdschema.openapi_schema(crd), ""):
            if path.split(".")[0] in {"spec", "status"}:
                assert f"`{path}`" in committed, (
                    f"{kind} field {path} missing from docs/crd-reference.md"
                )
