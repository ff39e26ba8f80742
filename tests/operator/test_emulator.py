"""The emulated API server behaves like a real one where the operator depends on it.

Each test states one rule of a real API server (kube-apiserver 1.3x) and checks it over
HTTP, with the kubernetes client, or through the real Kopf runtime.
"""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kmock
import kopf
import kubernetes.client
import kubernetes.config
import kubernetes.watch
import pytest
import yaml

from tests.support.kube_emulator import (
    ApiServer,
    OperatorRunner,
    kopf_peering_crds,
    label_selector,
    merge_patch,
    schemaless_crd,
)

ROOT = Path(__file__).resolve().parents[2]
NS = "tts-test"
EP_PATH = f"/apis/tts.f5tts.dev/v1alpha1/namespaces/{NS}/ttsendpoints"
CM_PATH = f"/api/v1/namespaces/{NS}/configmaps"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
RunOperator = Callable[..., OperatorRunner]
WaitFor = Callable[..., Any]
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def endpoint(name: str = "f5tts", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "10-ttsendpoint.yaml").read_text())
    body["metadata"] = {"name": name}
    body["spec"].update(spec)
    return body


def configmap(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}, **extra}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def deployment(name: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    labels = {"app": name}
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if owner is not None:
        meta["ownerReferences"] = [owner_ref(owner)]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "server", "image": "tts:1", "env": []}]},
            },
        },
    }


def owner_ref(owner: dict[str, Any], controller: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def names(items: list[dict[str, Any]]) -> list[str]:
    return sorted(item["metadata"]["name"] for item in items)


def test_create_sets_what_the_server_owns(api: ApiServer) -> None:
    status, created = api.http("POST", EP_PATH, endpoint())
    assert status == 201
    meta = created["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert meta["generation"] == 1
    assert meta["resourceVersion"].isdigit()
    assert RFC3339.match(meta["creationTimestamp"])
    assert meta["namespace"] == NS  # from the URL; the body had none
    other = api.create("configmaps", NS, configmap("other"))
    assert int(other["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert "generation" not in other["metadata"]  # ConfigMaps have no generation


def test_duplicate_create_is_409_already_exists(api: ApiServer) -> None:
    assert api.http("POST", EP_PATH, endpoint())[0] == 201
    status, body = api.http("POST", EP_PATH, endpoint())
    assert status == 409
    assert body["kind"] == "Status"
    assert body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "f5tts", "group": "tts.f5tts.dev", "kind": "ttsendpoints"}


def test_name_is_required_unless_generate_name(api: ApiServer) -> None:
    status, body = api.http("POST", CM_PATH, {"metadata": {}, "data": {}})
    assert (status, body["reason"]) == (422, "Invalid")
    status, body = api.http("POST", CM_PATH, {"metadata": {"generateName": "cm-"}})
    assert status == 201
    assert re.match(r"^cm-[a-z0-9]{5}$", body["metadata"]["name"])
    status, body = api.http("POST", CM_PATH, configmap("Bad_Name"))
    assert status == 422


def test_generation_follows_spec_only_and_resource_version_every_change(api: ApiServer) -> None:
    created = api.create("ttsendpoints", NS, endpoint())
    rv = int(created["metadata"]["resourceVersion"])

    def versions(obj: dict[str, Any]) -> tuple[int, int]:
        return obj["metadata"]["generation"], int(obj["metadata"]["resourceVersion"])

    spec = api.patch("ttsendpoints", NS, "f5tts", {"spec": {"replicas": 2}})
    assert versions(spec) == (2, rv + 1)
    status = api.patch_status("ttsendpoints", NS, "f5tts", {"phase": "Pending"})
    assert versions(status) == (2, rv + 2)
    labels = api.patch("ttsendpoints", NS, "f5tts", {"metadata": {"labels": {"a": "b"}}})
    assert versions(labels) == (2, rv + 3)
    same = api.patch("ttsendpoints", NS, "f5tts", {"spec": {"replicas": 2}})
    assert versions(same) == (2, rv + 3)  # nothing changed: nothing stored, no event

    dep = api.create("deployments", NS, deployment("server"))
    assert dep["metadata"]["generation"] == 1
    dep = api.patch("deployments", NS, "server", {"spec": {"replicas": 3}})
    assert dep["metadata"]["generation"] == 2
    dep = api.mark_deployment_available(NS, "server")
    assert dep["metadata"]["generation"] == 2
    assert dep["status"]["availableReplicas"] == 3


def test_stale_resource_version_is_409_conflict(api: ApiServer) -> None:
    created = api.create("configmaps", NS, configmap("cm"))
    api.patch("configmaps", NS, "cm", {"data": {"k": "new"}})
    stale = {
        "metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
        "data": {"k": "x"},
    }
    status, body = api.http("PATCH", f"{CM_PATH}/cm", stale, content_type=MERGE)
    assert (status, body["reason"]) == (409, "Conflict")


def test_status_subresource_isolation(api: ApiServer) -> None:
    body = endpoint()
    body["status"] = {"phase": "Ready"}
    created = api.create("ttsendpoints", NS, body)
    assert "status" not in created  # status is dropped on create

    status, obj = api.http(
        "PATCH", f"{EP_PATH}/f5tts", {"status": {"phase": "Ready"}}, content_type=MERGE
    )
    assert status == 200
    assert "status" not in obj  # the main resource ignores .status
    assert obj["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    patch = {
        "spec": {"replicas": 5},
        "metadata": {"labels": {"x": "y"}},
        "status": {"phase": "Ready"},
    }
    status, obj = api.http("PATCH", f"{EP_PATH}/f5tts/status", patch, content_type=MERGE)
    assert status == 200
    assert obj["status"] == {"phase": "Ready"}
    assert obj["spec"]["replicas"] == 1  # /status changes nothing else
    assert "x" not in (obj["metadata"].get("labels") or {})

    api.create("deployments", NS, deployment("server"))
    status, dep = api.http(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/deployments/server",
        {"status": {"readyReplicas": 1}},
        content_type=MERGE,
    )
    assert status == 200
    assert "readyReplicas" not in dep.get("status", {})


def test_custom_resources_are_pruned_defaulted_and_validated(api: ApiServer) -> None:
    api.create("ttsendpoints", NS, endpoint())
    obj = api.patch_status(
        "ttsendpoints", NS, "f5tts", {"phase": "Pending", "kopf": {"progress": {}}}
    )
    assert obj["status"] == {"phase": "Pending"}  # unknown fields dropped, as a real server prunes
    assert any(entry.endswith(".status.kopf") for entry in api.pruned)
    status, body = api.http(
        "PATCH", f"{EP_PATH}/f5tts/status", {"status": {"phase": "Bogus"}}, content_type=MERGE
    )
    assert (status, body["reason"]) == (422, "Invalid")
    status, body = api.http(
        "PATCH", f"{EP_PATH}/f5tts", {"spec": {"model": {"name": "other"}}}, content_type=MERGE
    )
    assert status == 422
    assert "immutable" in body["message"]  # the CRD's CEL transition rule


def test_merge_patch_null_deletes_and_lists_are_replaced(api: ApiServer) -> None:
    api.create(
        "configmaps", NS, configmap("cm", labels={"a": "1", "b": "2"}, annotations={"x": "y"})
    )
    patch = {
        "metadata": {"labels": {"a": None}, "annotations": None},
        "data": {"k": None, "n": "1"},
    }
    status, obj = api.http("PATCH", f"{CM_PATH}/cm", patch, content_type=MERGE)
    assert status == 200
    assert obj["metadata"]["labels"] == {"b": "2"}
    assert "annotations" not in obj["metadata"]
    assert obj["data"] == {"n": "1"}
    assert merge_patch({"l": [1, 2], "d": {"x": 1}}, {"l": [3], "d": {"y": 2}}) == {
        "l": [3],
        "d": {"x": 1, "y": 2},
    }


def test_json_patch_test_operation_guards_resource_version(api: ApiServer) -> None:
    created = api.create("configmaps", NS, configmap("cm"))
    rv = created["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": ["tts.f5tts.dev/finalizer"]},
    ]
    status, obj = api.http("PATCH", f"{CM_PATH}/cm", ops, content_type=JSON_PATCH)
    assert status == 200
    assert obj["metadata"]["finalizers"] == ["tts.f5tts.dev/finalizer"]
    status, body = api.http("PATCH", f"{CM_PATH}/cm", ops, content_type=JSON_PATCH)  # stale test
    assert (status, body["reason"]) == (422, "Invalid")  # what Kopf expects to retry later


def test_strategic_merge_patch_merges_lists_by_key(api: ApiServer) -> None:
    api.create("deployments", NS, deployment("server"))
    container = {"name": "server", "env": [{"name": "A", "value": "1"}]}
    patch = {"spec": {"template": {"spec": {"containers": [container]}}}}
    status, dep = api.http(
        "PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/server", patch, content_type=STRATEGIC
    )
    assert status == 200
    [merged] = dep["spec"]["template"]["spec"]["containers"]
    assert merged["image"] == "tts:1"  # merged by name, not replaced
    assert merged["env"] == [{"name": "A", "value": "1"}]
    api.create("ttsendpoints", NS, endpoint())
    status, _ = api.http("PATCH", f"{EP_PATH}/f5tts", {"spec": {}}, content_type=STRATEGIC)
    assert status == 415  # no strategic merge for custom resources


def test_label_and_field_selectors(api: ApiServer) -> None:
    api.create("configmaps", NS, configmap("a", {"app": "tts", "tier": "cache"}))
    api.create("configmaps", NS, configmap("b", {"app": "tts", "tier": "server"}))
    api.create("configmaps", NS, configmap("c", {"app": "other"}))
    api.create("configmaps", NS, configmap("d"))
    cases = {
        "app=tts": ["a", "b"],
        "app==tts,tier=server": ["b"],
        "app!=tts": ["c", "d"],
        "tier": ["a", "b"],
        "!tier": ["c", "d"],
        "app in (tts, other)": ["a", "b", "c"],
        "tier notin (cache)": ["b", "c", "d"],
    }
    for selector, expected in cases.items():
        query = urllib.parse.urlencode({"labelSelector": selector})
        status, body = api.http("GET", f"{CM_PATH}?{query}")
        assert status == 200, body
        assert names(body["items"]) == expected, selector
        assert body["metadata"]["resourceVersion"].isdigit()
        assert body["kind"] == "ConfigMapList"
    status, body = api.http("GET", f"{CM_PATH}?fieldSelector=metadata.name%3Db")
    assert names(body["items"]) == ["b"]
    assert api.http("GET", f"{CM_PATH}?labelSelector=a%20%3D%3D%3D")[0] == 400
    assert not label_selector("x=1")({})
    assert api.count(method="GET", kind="configmaps", action="list") == len(cases) + 2


def test_namespaces_are_served(api: ApiServer) -> None:
    status, body = api.http("GET", "/api/v1/namespaces")
    assert status == 200
    assert body["kind"] == "NamespaceList"
    assert names(body["items"]) == ["default", NS]
    assert api.http("GET", f"/api/v1/namespaces/{NS}")[1]["status"] == {"phase": "Active"}
    assert api.http("GET", "/api/v1/namespaces/nowhere")[0] == 404
    api.create("configmaps", "elsewhere", configmap("cm"))
    assert "elsewhere" in names(api.http("GET", "/api/v1/namespaces")[1]["items"])
    assert api.http("GET", "/api/v1/namespaces", token="wrong")[0] == 401
    api.create("configmaps", "elsewhere", configmap("held", finalizers=["tts.f5tts.dev/finalizer"]))
    status, ns = api.http("DELETE", "/api/v1/namespaces/elsewhere")
    assert (status, ns["status"]["phase"]) == (200, "Terminating")  # waits for its content
    assert api.get("configmaps", "elsewhere", "cm") is None
    assert api.http("POST", "/api/v1/namespaces/elsewhere/configmaps", configmap("new"))[0] == 403
    api.patch("configmaps", "elsewhere", "held", {"metadata": {"finalizers": None}})
    assert api.get("namespaces", None, "elsewhere") is None


def test_update_with_put_and_paginated_lists(api: ApiServer) -> None:
    for i in range(5):
        api.create("configmaps", NS, configmap(f"cm{i}"))
    status, page = api.http("GET", f"{CM_PATH}?limit=2")
    assert names(page["items"]) == ["cm0", "cm1"]
    assert page["metadata"]["remainingItemCount"] == 3
    token = page["metadata"]["continue"]
    assert names(api.http("GET", f"{CM_PATH}?limit=2&continue={token}")[1]["items"]) == [
        "cm2",
        "cm3",
    ]
    current = api.get("configmaps", NS, "cm0")
    assert current is not None
    current["data"] = {"k": "put"}
    status, replaced = api.http("PUT", f"{CM_PATH}/cm0", current)
    assert (status, replaced["data"]) == (200, {"k": "put"})
    assert api.http("PUT", f"{CM_PATH}/cm0", current)[1]["reason"] == "Conflict"  # stale now
    obj = api.create("ttsendpoints", NS, endpoint())
    del obj["metadata"]["resourceVersion"]
    assert api.http("PUT", f"{EP_PATH}/f5tts", obj)[0] == 422  # custom resources need one


def test_finalizers_delay_deletion(api: ApiServer) -> None:
    api.create("configmaps", NS, configmap("cm", finalizers=["tts.f5tts.dev/finalizer"]))
    status, _ = api.http("DELETE", f"{CM_PATH}/cm")
    assert status == 200
    kept = api.get("configmaps", NS, "cm")
    assert kept is not None
    assert RFC3339.match(kept["metadata"]["deletionTimestamp"])
    more = {"metadata": {"finalizers": ["tts.f5tts.dev/finalizer", "other.dev/x"]}}
    assert api.http("PATCH", f"{CM_PATH}/cm", more, content_type=MERGE)[0] == 422
    assert api.http("POST", CM_PATH, configmap("cm"))[0] == 409  # still there while terminating
    status, last = api.http(
        "PATCH", f"{CM_PATH}/cm", {"metadata": {"finalizers": None}}, content_type=MERGE
    )
    assert status == 200
    assert "finalizers" not in last["metadata"]
    assert api.get("configmaps", NS, "cm") is None
    api.create("configmaps", NS, configmap("plain"))
    assert api.http("DELETE", f"{CM_PATH}/plain")[0] == 200
    assert api.get("configmaps", NS, "plain") is None
    assert api.http("DELETE", f"{CM_PATH}/plain")[1]["reason"] == "NotFound"


def test_owner_references_cascade(api: ApiServer) -> None:
    owner = api.create("ttsendpoints", NS, endpoint())
    other = api.create("ttsendpoints", NS, endpoint("other"))
    dep = api.create("deployments", NS, deployment("server", owner=owner))
    api.create("configmaps", NS, configmap("grandchild", ownerReferences=[owner_ref(dep)]))
    shared = configmap(
        "shared", ownerReferences=[owner_ref(owner), owner_ref(other, controller=False)]
    )
    api.create("configmaps", NS, shared)
    job = api.create(
        "jobs",
        NS,
        {
            "metadata": {"name": "cache"},
            "spec": {
                "template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}
                }
            },
        },
    )
    api.complete_job(NS, "cache", termination_message='{"bytes": 1}')
    [pod] = api.objects("pods", NS)
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]

    api.delete("ttsendpoints", NS, "f5tts")
    assert api.get("deployments", NS, "server") is None
    assert api.get("configmaps", NS, "grandchild") is None
    survivor = api.get("configmaps", NS, "shared")
    assert survivor is not None
    assert [ref["uid"] for ref in survivor["metadata"]["ownerReferences"]] == [
        other["metadata"]["uid"]
    ]

    api.delete("jobs", NS, "cache")  # batch/v1 Jobs orphan their pods unless told otherwise
    [orphan] = api.objects("pods", NS)
    assert "ownerReferences" not in orphan["metadata"]

    dangling = configmap(
        "dangling", ownerReferences=[{**owner_ref(owner), "uid": str(uuid.uuid4())}]
    )
    api.create("configmaps", NS, dangling)
    assert api.get("configmaps", NS, "dangling") is None  # the garbage collector removes it


def test_builtins_get_defaults_and_validation(api: ApiServer) -> None:
    dep = api.create("deployments", NS, deployment("server"))
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert pod["restartPolicy"] == "Always"
    assert pod["containers"][0]["terminationMessagePath"] == "/dev/termination-log"
    bad = deployment("bad")
    bad["spec"]["selector"] = {"matchLabels": {"app": "nope"}}
    status, body = api.http("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", bad)
    assert status == 422
    assert "selector" in body["message"]
    job: dict[str, Any] = {
        "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
    }
    assert api.http("POST", f"/apis/batch/v1/namespaces/{NS}/jobs", job)[0] == 422  # restartPolicy
    job["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    status, created = api.http("POST", f"/apis/batch/v1/namespaces/{NS}/jobs", job)
    assert status == 201
    assert created["spec"]["template"]["metadata"]["labels"]["job-name"] == "j"
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "other"}]}}}}
    assert (
        api.http("PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/j", patch, content_type=MERGE)[0]
        == 422
    )
    labelled = configmap("cm", {"too-long": "x" * 64})
    assert api.http("POST", CM_PATH, labelled)[0] == 422


def test_watch_resumes_from_a_resource_version(api: ApiServer) -> None:
    kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    core: Any = kubernetes.client.CoreV1Api()  # its models type every field Optional
    api.create("configmaps", NS, configmap("a", {"app": "tts"}))
    api.create("configmaps", NS, configmap("b"))
    listed = core.list_namespaced_config_map(NS, label_selector="app=tts")
    assert [cm.metadata.name for cm in listed.items] == ["a"]
    api.patch("configmaps", NS, "a", {"data": {"k": "2"}})  # MODIFIED
    api.patch("configmaps", NS, "b", {"metadata": {"labels": {"app": "tts"}}})  # enters: ADDED
    api.patch("configmaps", NS, "a", {"metadata": {"labels": {"app": None}}})  # leaves: DELETED
    api.delete("configmaps", NS, "b")  # DELETED
    seen: list[tuple[str, str, int]] = []
    watch: Any = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
    for event in watch.stream(
        core.list_namespaced_config_map,
        NS,
        label_selector="app=tts",
        resource_version=listed.metadata.resource_version,
        timeout_seconds=5,
    ):
        meta = event["object"].metadata
        seen.append((event["type"], meta.name, int(meta.resource_version)))
        if len(seen) == 4:
            watch.stop()
    assert [(kind, name) for kind, name, _ in seen] == [
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
        ("DELETED", "b"),
    ]
    rvs = [rv for _, _, rv in seen]
    assert rvs == sorted(rvs)
    assert rvs[0] > int(listed.metadata.resource_version)


def test_watch_from_a_compacted_resource_version_is_410_gone() -> None:
    with ApiServer(log_size=3, token=None) as small:
        for i in range(6):
            small.create("configmaps", NS, configmap(f"cm{i}"))
        request = urllib.request.Request(f"{small.url}{CM_PATH}?watch=true&resourceVersion=1")
        with urllib.request.urlopen(request, timeout=5) as response:
            event = json.loads(response.readline())
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410


def test_kubernetes_client_talks_to_it(api: ApiServer) -> None:
    kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    apps: Any = kubernetes.client.AppsV1Api()
    created = apps.create_namespaced_deployment(NS, deployment("server"))
    assert created.metadata.generation == 1
    patched = apps.patch_namespaced_deployment("server", NS, {"spec": {"replicas": 2}})
    assert patched.spec.replicas == 2
    assert patched.metadata.generation == 2
    with pytest.raises(kubernetes.client.ApiException) as conflict:
        apps.create_namespaced_deployment(NS, deployment("server"))
    assert conflict.value.status == 409
    custom: Any = kubernetes.client.CustomObjectsApi()
    custom.create_namespaced_custom_object(
        "tts.f5tts.dev", "v1alpha1", NS, "ttsendpoints", endpoint()
    )
    status = {"status": {"phase": "Ready", "readyReplicas": 1}}
    custom.patch_namespaced_custom_object_status(
        "tts.f5tts.dev", "v1alpha1", NS, "ttsendpoints", "f5tts", status
    )
    assert api.get("ttsendpoints", NS, "f5tts")["status"]["readyReplicas"] == 1  # type: ignore[index]


def test_crds_added_at_runtime_join_discovery(api: ApiServer) -> None:
    assert api.http("GET", "/apis/monitoring.coreos.com/v1")[0] == 404
    crd = schemaless_crd("monitoring.coreos.com", "ServiceMonitor")
    api.add_crd(crd)
    status, body = api.http("GET", "/apis/monitoring.coreos.com/v1")
    assert status == 200
    assert [r["name"] for r in body["resources"]] == ["servicemonitors"]
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com"
    assert api.http("GET", path)[0] == 200
    api.create(
        "servicemonitors",
        NS,
        {"metadata": {"name": "sm"}, "spec": {"endpoints": [{"port": "http"}]}},
    )
    api.delete("customresourcedefinitions", None, "servicemonitors.monitoring.coreos.com")
    assert api.http("GET", "/apis/monitoring.coreos.com/v1")[0] == 404


def test_events_are_stored(api: ApiServer) -> None:
    event = {
        "metadata": {"generateName": "kopf-event-"},
        "type": "Normal",
        "reason": "Logging",
        "message": "hello",
        "involvedObject": {"kind": "TTSEndpoint", "name": "f5tts", "namespace": NS},
    }
    assert api.http("POST", f"/api/v1/namespaces/{NS}/events", event)[0] == 201
    [stored] = api.events(NS, involved="f5tts")
    assert stored["message"] == "hello"


def test_faults_injected_with_kmock_change_nothing(api: ApiServer) -> None:
    api.create("configmaps", NS, configmap("cm"))
    api.kmock["patch", kmock.resource("v1/configmaps")] << 500
    status, _ = api.http("PATCH", f"{CM_PATH}/cm", {"data": {"k": "x"}}, content_type=MERGE)
    assert status == 500
    assert api.get("configmaps", NS, "cm")["data"] == {"k": "v"}  # type: ignore[index]


def test_reactions_see_each_request_once_and_history_views_still_work(api: ApiServer) -> None:
    api.create("configmaps", NS, configmap("cm"))
    seen: list[kmock.Request] = []

    def never(request: kmock.Request) -> bool:
        seen.append(request)
        return False

    api.kmock[never] << 500
    api.kmock["patch", kmock.resource("v1/configmaps")][:1] << 500  # only the first PATCH fails
    statuses = [
        api.http("PATCH", f"{CM_PATH}/cm", {"data": {"k": str(i)}}, content_type=MERGE)[0]
        for i in range(4)
    ]
    assert statuses == [500, 200, 200, 200]
    assert api.get("configmaps", NS, "cm")["data"] == {"k": "3"}  # type: ignore[index]
    # One test per request: kmock itself re-tests every earlier request (1 + 2 + 3 + 4 calls).
    assert len(seen) == 4


def test_remembered_verdicts_judge_each_write_alike(api: ApiServer) -> None:
    # Validity is remembered by value: the same bad value is rejected every time, with the
    # same message, and a transition rule's verdict depends on the old value too.
    cache = {"existingClaim": "mine", "size": "1Gi"}
    bad = endpoint(storage={"credentialsSecret": {"name": "s"}, "cache": cache})
    for _ in range(2):
        status, body = api.http("POST", EP_PATH, bad)
        assert (status, body["reason"]) == (422, "Invalid")
        assert "existingClaim excludes size" in body["message"]
    api.create("ttsendpoints", NS, endpoint())
    for _ in range(2):
        status, body = api.http(
            "PATCH", f"{EP_PATH}/f5tts/status", {"status": {"phase": "Bogus"}}, content_type=MERGE
        )
        assert (status, body["reason"]) == (422, "Invalid")
    other_model = {"spec": {"model": {"name": "other"}}}
    for _ in range(2):
        status, body = api.http("PATCH", f"{EP_PATH}/f5tts", other_model, content_type=MERGE)
        assert status == 422
        assert "immutable" in body["message"]
    api.create(
        "ttsendpoints",
        NS,
        endpoint("second", model={"name": "other", "source": "s3://bucket/models/other/v1/"}),
    )
    assert (
        api.patch("ttsendpoints", NS, "second", {"spec": {"replicas": 2}})["spec"]["replicas"] == 2
    )
    assert api.patch_status("ttsendpoints", NS, "f5tts", {"phase": "Pending"})["status"] == {
        "phase": "Pending"
    }


def test_kopf_runtime_runs_handlers_and_resumes_after_a_restart(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    registry = kopf.OperatorRegistry()
    created: list[str] = []
    resumed: list[str] = []

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="tts.f5tts.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="tts.f5tts.dev", key="last-handled-configuration"
        )

    @kopf.on.create("tts.f5tts.dev", "v1alpha1", "ttsendpoints", registry=registry)
    def on_create(name: str, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        created.append(name)
        patch.status["phase"] = "Pending"
        kopf.info(body, reason="Accepted", message="endpoint accepted")

    @kopf.on.resume("tts.f5tts.dev", "v1alpha1", "ttsendpoints", registry=registry)
    def on_resume(name: str, **_: Any) -> None:
        resumed.append(name)

    operator = run_operator(registry)
    api.create("ttsendpoints", NS, endpoint())

    def handled() -> dict[str, Any] | None:
        obj = api.get("ttsendpoints", NS, "f5tts")
        annotations = (obj or {}).get("metadata", {}).get("annotations", {})
        marked = "tts.f5tts.dev/last-handled-configuration" in annotations
        return obj if marked and obj and obj.get("status") == {"phase": "Pending"} else None

    done = wait_for(handled, message="the create handler's status and Kopf's annotations")
    assert done["metadata"]["generation"] == 1
    [event] = wait_for(lambda: api.events(NS, involved="f5tts"), message="Kopf's event")
    assert (event["reason"], event["message"]) == ("Accepted", "endpoint accepted")
    assert api.pruned == []

    operator.restart()
    wait_for(lambda: resumed, message="the resume handler after the restart")
    assert created == ["f5tts"]  # the restarted operator knew the object was handled
    assert resumed == ["f5tts"]
    assert api.count(method="GET", kind="namespaces") >= 2  # Kopf listed the namespaces each time
    assert api.get("ttsendpoints", NS, "f5tts") == done  # the restart wrote nothing


def test_kopf_login_finalizer_and_garbage_collection_like_production(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    # The default registry's kind: login_via_client loads KUBECONFIG into the kubernetes client.
    from kopf._core.intents.registries import SmartOperatorRegistry

    registry = SmartOperatorRegistry()
    deleted: list[str] = []

    @kopf.on.create("tts.f5tts.dev", "v1alpha1", "ttsendpoints", registry=registry)
    def on_create(name: str, namespace: str | None, body: kopf.Body, **_: Any) -> None:
        child = configmap(f"{name}-child")
        kopf.adopt(child, owner=body)
        core: Any = kubernetes.client.CoreV1Api()  # configured by Kopf's login, as in production
        core.create_namespaced_config_map(namespace, child)

    @kopf.on.delete("tts.f5tts.dev", "v1alpha1", "ttsendpoints", registry=registry)
    def on_delete(name: str, **_: Any) -> None:
        deleted.append(name)

    run_operator(registry)
    api.create("ttsendpoints", NS, endpoint())
    wait_for(lambda: api.get("configmaps", NS, "f5tts-child"), message="the handler's ConfigMap")
    assert kubernetes.client.Configuration.get_default_copy().host == api.url
    owned = wait_for(
        lambda: (obj := api.get("ttsendpoints", NS, "f5tts")) and obj["metadata"].get("finalizers"),
        message="Kopf's finalizer (a JSON patch guarded by a resourceVersion test)",
    )
    assert owned == ["kopf.zalando.org/KopfFinalizerMarker"]

    api.delete("ttsendpoints", NS, "f5tts")
    wait_for(lambda: api.get("ttsendpoints", NS, "f5tts") is None, message="the release")
    assert deleted == ["f5tts"]
    assert api.get("configmaps", NS, "f5tts-child") is None  # collected with its owner


def test_kopf_peering_when_its_crds_are_installed(
    api: ApiServer, run_operator: RunOperator, wait_for: WaitFor
) -> None:
    for crd in kopf_peering_crds():
        api.add_crd(crd)
    api.create("kopfpeerings", NS, {"metadata": {"name": "tts"}})
    operator = run_operator(kopf.OperatorRegistry(), standalone=False, peering_name="tts")
    wait_for(lambda: (api.get("kopfpeerings", NS, "tts") or {}).get("status"), message="keep-alive")
    operator.stop()
    assert not (api.get("kopfpeerings", NS, "tts") or {}).get("status")  # it said goodbye
