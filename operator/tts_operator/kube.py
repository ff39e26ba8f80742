"""One thin API wrapper: get, create (409 means "already there"), patch, delete (404 means gone).

Objects are plain dicts, addressed by apiVersion and kind through a fixed table
of the kinds the operator touches (which is also the RBAC the chart renders).
Calls run the synchronous kubernetes client in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("tts_operator.kube")

#: Seconds before retrying a pass the API server answered with a conflict (another
#: writer won the race), was busy or unreachable, or refused for want of a right.
CONFLICT_RETRY_S = 1.0
BUSY_RETRY_S = 5.0
FORBIDDEN_RETRY_S = 60.0

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else f"/apis/{self.api_version}"
        )
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


KINDS: dict[str, Kind] = {
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "Secret": Kind("v1", "secrets"),
    "Event": Kind("v1", "events"),
    "Deployment": Kind("apps/v1", "deployments"),
    "Job": Kind("batch/v1", "jobs"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": Kind("autoscaling/v2", "horizontalpodautoscalers"),
    "ScaledObject": Kind("keda.sh/v1alpha1", "scaledobjects"),
    "ServiceMonitor": Kind("monitoring.coreos.com/v1", "servicemonitors"),
    "TTSEndpoint": Kind("tts.f5tts.dev/v1alpha1", "ttsendpoints"),
    "TTSJob": Kind("tts.f5tts.dev/v1alpha1", "ttsjobs"),
    "CustomResourceDefinition": Kind(
        "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False
    ),
}


def retry_delay(exc: BaseException) -> float | None:
    """Pure: how long until a pass that met ``exc`` from the API server may work, or None
    when trying again cannot help until the resource changes (the server rejected an
    object as invalid: a 400 or 422).

    A 409 is a lost race, retried at once; a 429 or 5xx waits for the server (its
    Retry-After when given); a 403 waits for the RBAC to be fixed; a dropped or refused
    connection waits as a busy server does.
    """
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        if status == 409:
            return CONFLICT_RETRY_S
        if status in (400, 422):
            return None
        if status == 403:
            return FORBIDDEN_RETRY_S
        after = (exc.headers or {}).get("Retry-After")
        if status == 429 and after and str(after).isdigit():
            return float(after)
        return BUSY_RETRY_S
    return BUSY_RETRY_S if isinstance(exc, OSError | urllib3.exceptions.HTTPError) else None


class Kube:
    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        if api_client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        self.api = api_client

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> bytes:
        serialized = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Accept": accept, "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        method_, url, headers, payload, post = serialized
        response = self.api.call_api(
            method_, url, header_params=headers, body=payload, post_params=post
        )
        raw = response.read()  # type: ignore[no-untyped-call]
        if response.status >= 400:
            raise ApiException(http_resp=response)
        return bytes(raw or b"")

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        raw = self._request(method, path, body, query, content_type)
        return json.loads(raw) if raw else None

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        return await asyncio.to_thread(self._call, method, path, body, query, content_type)

    async def log_tail(self, namespace: str, pod: str, container: str, lines: int = 20) -> str:
        """The last ``lines`` lines a pod's container logged."""
        path = KINDS["Pod"].path(namespace, pod, "log")
        query = [("container", container), ("tailLines", str(lines))]
        raw = await asyncio.to_thread(
            self._request, "GET", path, None, query, "application/json", "*/*"
        )
        return raw.decode(errors="replace")

    async def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        try:
            result: Obj = await self.call("GET", KINDS[kind].path(namespace, name))
            return result
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[Obj]:
        query = [("labelSelector", label_selector)] if label_selector else []
        try:
            result = await self.call("GET", KINDS[kind].path(namespace), query=query)
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        return list(result.get("items", []))

    async def create(self, obj: Obj) -> Obj:
        """Create; an object that is already there is returned as it is (409 is not an error)."""
        kind, meta = obj["kind"], obj["metadata"]
        try:
            created: Obj = await self.call(
                "POST", KINDS[kind].path(meta.get("namespace")), body=obj
            )
            log.info("created %s %s/%s", kind, meta.get("namespace"), meta["name"])
            return created
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = await self.get(kind, meta.get("namespace"), meta["name"])
            if existing is None:
                raise
            return existing

    async def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Obj,
        *,
        subresource: str | None = None,
    ) -> Obj:
        result: Obj = await self.call(
            "PATCH",
            KINDS[kind].path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )
        return result

    async def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete with background propagation; an object already gone is not an error."""
        try:
            await self.call(
                "DELETE",
                KINDS[kind].path(namespace, name),
                body={"propagationPolicy": "Background"},
            )
            log.info("deleted %s %s/%s", kind, namespace, name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    async def crd_exists(self, name: str) -> bool:
        try:
            return await self.get("CustomResourceDefinition", None, name) is not None
        except ApiException as exc:
            if exc.status == 403:
                return False
            raise


# What the operator does to the children it owns: create, keep in sync, delete.
OWNED_VERBS = ["get", "list", "watch", "create", "patch", "delete"]


def _owns(group: str, *resources: str) -> Obj:
    return {"apiGroups": [group], "resources": list(resources), "verbs": list(OWNED_VERBS)}


# The rules the operator needs, in one place: the chart renders its RBAC from this list.
RBAC_RULES: list[Obj] = [
    {
        "apiGroups": ["tts.f5tts.dev"],
        "resources": ["ttsendpoints", "ttsjobs"],
        "verbs": ["get", "list", "watch", "patch", "update", "delete"],
    },
    {
        "apiGroups": ["tts.f5tts.dev"],
        "resources": ["ttsendpoints/status", "ttsjobs/status"],
        "verbs": ["get", "patch", "update"],
    },
    _owns("", "persistentvolumeclaims", "services"),
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    # The cache Job's progress lines (bytes, rate, ETA) while it syncs.
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # The endpoint's storage credentials (spec.storage.credentialsSecret) and API key
    # (spec.apiKeySecret) are read by name: get only, never list or watch.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    _owns("apps", "deployments"),
    _owns("batch", "jobs"),
    _owns("policy", "poddisruptionbudgets"),
    _owns("autoscaling", "horizontalpodautoscalers"),
    _owns("keda.sh", "scaledobjects"),
    _owns("monitoring.coreos.com", "servicemonitors"),
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["get", "list", "watch", "create", "patch", "update"],
    },
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings", "clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
]
