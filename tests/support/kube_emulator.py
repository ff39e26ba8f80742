"""A Kubernetes API server for tests: kmock's emulator, taught what a real API server does.

The operator's tests run the real Kopf runtime against this server instead of a
cluster, so the server must not be kinder than a real one where the operator
depends on it. kmock 0.8's ``KubernetesEmulator`` is a plain JSON store: it sets
no uid, generation or resourceVersion, ignores label selectors, merges every
patch, and cannot parse ``/api/v1/namespaces``. This module keeps what kmock
does well and replaces the storage semantics.

Layout
------
``KubeEmulator`` subclasses ``kmock.KubernetesEmulator``. kmock still does the
HTTP parsing, discovery documents (``/api``, ``/apis``, ``/apis/<g>/<v>``,
from kmock's bundled list of built-in resources plus every CRD loaded here),
Status error rendering and its DSL, so a test can inject faults the kmock way::

    api.kmock["patch", kmock.resource("apps/v1/deployments")] << 500

The object store and its rules live in the fallback handlers (``_serve_*``),
which kmock reaches only when no test reaction answered first; so a request a
test answers with an injected 500 changes nothing, as on a real server (kmock
itself would still apply it). ``_handle`` bypasses kmock's own store on purpose,
and ``_react`` replaces kmock's choice of reaction, whose cost grows with every
request served (it re-filters the whole request history each time).

Cost per request does not grow with the store or the history: the store keeps
indexes (objects by namespace, dependents by owner uid), watches read only the
changes they have not sent, and custom resources are checked by a
``SchemaChecker`` that compiles a CRD's schema once and remembers verdicts by
value (a status update does not re-run the spec's CEL rules).

``OperatorRunner`` runs the real Kopf runtime (``kopf.operator``) on a thread
of its own against it, stoppable and restartable within one test.

``ApiServer`` wraps the emulator rather than being it: it runs the server on
its own thread and event loop, so that the test thread, the operator's
synchronous kubernetes client and Kopf (on its own thread) never block the
server; and it offers the test helpers (``objects``, ``get``, ``create``,
``patch``, ``patch_status``, ``delete``, ``events``, ``requests``, ``wait_for``)
under short names that kmock's root view already uses for other things (``get``/``patch``/``delete`` are its HTTP client shortcuts,
``objects`` its own store). The helpers go through the same code as HTTP
requests, so they get the same semantics (status subresource, generation...).

What it implements (as a real API server does)
----------------------------------------------
- create: uid, generation 1 (custom resources and generation-tracking built-ins),
  resourceVersion from one global counter, creationTimestamp, namespace from the
  URL, generateName; 409 AlreadyExists; 422 for a missing name or a set
  resourceVersion; names checked (DNS subdomain; DNS-1035 label for Services,
  63 characters for Jobs); labels, annotations and ownerReferences checked.
- status subresource (TTSEndpoint, TTSJob, Deployments, Jobs, Pods, PVCs,
  Services...: whatever discovery says): the main resource ignores .status,
  ``/status`` changes only .status (and no metadata); status is dropped on
  create (Pods, PVCs, Services and Namespaces get the status the server sets).
- generation: bumped when anything but metadata/status changes (custom
  resources) or .spec changes (Deployments, Jobs, StatefulSets...), and when
  deletionTimestamp is set, never for status or metadata changes.
- resourceVersion: bumped by every write that changes the object; a write that
  changes nothing is not stored and sends no watch event (as etcd-backed
  servers do); a stale resourceVersion in a body is a 409 Conflict.
- patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902, with ``test``:
  Kopf's finalizer patches rely on it, a failed test is a 422), strategic merge
  patch for built-in kinds (lists merged by their merge keys: containers, env,
  volumes, ports, conditions, ownerReferences...; finalizers as a set;
  ``$patch: delete/replace``), 415 for strategic merge on custom resources,
  PUT (update) with optimistic concurrency (custom resources need a
  resourceVersion in the body, as on a real server).
- custom resources are pruned (unknown fields dropped, recorded in
  ``ApiServer.pruned``), defaulted and validated (structural schema and CEL
  rules, via ``tests.support.crdschema``) on every write: 422 Invalid.
- built-ins: defaults a real server fills in (Deployment strategy, pod spec
  dnsPolicy/restartPolicy/terminationMessagePath..., Job selector and labels,
  Service clusterIP/ports...), OpenAPI validation via kubernetes-validate, and
  the rules an operator trips on: Deployment selector must match the template
  and is immutable, a Job's template/selector are immutable and its
  restartPolicy must be Never/OnFailure, a PVC's spec is immutable except a
  larger storage request, a Service's clusterIP is immutable.
- delete: finalizers delay it (deletionTimestamp set, removed when a patch
  empties them; no new finalizers on a terminating object); ownerReferences
  garbage collection by uid, background (default), foreground (children first)
  or orphan (the default for batch/v1 Jobs, as on a real server); children
  whose owners are all gone (or never existed) are deleted; deleting a
  namespace deletes its objects, and it stays Terminating (no new objects:
  403) until the last one is gone.
- list/watch: labelSelector (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``,
  ``a in (x,y)``, ``a notin (x,y)``), fieldSelector (``metadata.name``,
  ``metadata.namespace`` and any dotted path), list resourceVersion and
  limit/continue; watches resume from a resourceVersion (410 Gone when it was
  compacted), ADDED/MODIFIED/DELETED with the new resourceVersion (an object
  leaving a watch's label selector is DELETED for it), timeoutSeconds,
  sendInitialEvents with the initial-events-end bookmark.
- namespaces: GET/LIST/WATCH /api/v1/namespaces (kmock answers 500), created
  on first use; ``default`` always exists.
- CRDs are objects of apiextensions.k8s.io/v1 that Kopf can watch: creating
  one (``ApiServer.add_crd``) adds the resource to discovery, deleting it
  removes the resource and its objects.
- events (core v1 and events.k8s.io/v1) are stored like any object.
- Kopf's peering: ``kopf_peering_crds()`` are the kopf.dev/v1 CRDs to install
  when a test runs the operator with a peering name (standalone runs need none).
- bearer-token authentication (401 without the kubeconfig's token).

What it does not implement
--------------------------
- No controllers: nothing creates ReplicaSets or Pods, nothing fills a
  Deployment's or Job's status, no kubelet. Tests play those parts with
  ``ApiServer.mark_deployment_available``, ``complete_job``, ``fail_job``
  (optionally with a finished pod carrying a termination message) and
  ``patch_status``. Pods are deleted at once (no grace period).
- No admission webhooks, RBAC, quotas, server-side apply (415), the scale
  subresource, dry-run, deletecollection, periodic watch bookmarks, or list
  resourceVersion semantics (a list is always the latest state).
- A CRD with several versions stores each served version apart (no conversion).
- fieldSelector accepts any dotted path (a real server allows a few fields per
  kind and answers 400 for the others).
- A missing namespace is created on first use instead of answering 404.
- Built-in kinds are validated but not pruned; their defaults and rules are the
  subset listed above, not the whole of kube-apiserver's.
- Garbage collection is immediate (a real collector runs moments later) and
  treats an owner in another namespace as absent, as the real one does.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import copy
import datetime
import enum
import functools
import ipaddress
import itertools
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import jsonschema
import kmock
import kubernetes_validate
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError
from kmock._internal import filtering, rendering

from tests.support import crdschema
from tests.support.operator_runner import OperatorRunner  # noqa: F401  (re-exported)

T = TypeVar("T")
Body = dict[str, Any]
KindKey = tuple[str, str, str]  # group, version, plural
ObjKey = tuple[str | None, str]  # namespace, name

CRD_KEY: KindKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACE_KEY: KindKey = ("", "v1", "namespaces")
EVENT_KEYS = {("", "v1", "events"), ("events.k8s.io", "v1", "events")}
ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

# Built-ins whose metadata.generation the API server maintains (spec changes bump it).
GENERATION_BUILTINS = {
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("policy", "poddisruptionbudgets"),
    ("autoscaling", "horizontalpodautoscalers"),
    ("networking.k8s.io", "ingresses"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
}
# Built-ins validated with kubernetes-validate's OpenAPI schemas on create and update.
VALIDATED_BUILTINS = {
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("", "pods"),
    ("", "services"),
    ("", "persistentvolumeclaims"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "serviceaccounts"),
    ("policy", "poddisruptionbudgets"),
    ("coordination.k8s.io", "leases"),
}
KUBERNETES_VERSION = "1.37"
# Strategic merge patch: the merge key of lists, by field name (all kinds used here agree).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "ports": "containerPort|port",
}
SET_LISTS = {"finalizers"}  # primitive lists with the "merge" patch strategy

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_ANNOTATIONS_BYTES = 256 * 1024
NAMESPACE_PATH = re.compile(
    r"^/api/v1/namespaces(?:/(?P<name>[^/]+)(?:/(?P<sub>status|finalize))?)?/?$"
)
TRUE_WORDS = {"1", "t", "T", "true", "TRUE", "True"}


# --------------------------------------------------------------------------------------------
# Errors: Status objects with the reasons and codes of a real server.
# --------------------------------------------------------------------------------------------


def api_error(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=code, reason=reason, message=message, details=dict(details or {})
    )


def _details(kind: Kind, name: str | None) -> dict[str, Any]:
    return {"name": name or "", "group": kind.group, "kind": kind.plural}


def not_found(kind: Kind, name: str | None) -> kmock.KubernetesError:
    return api_error(
        404, "NotFound", f'{kind.resource_name} "{name}" not found', _details(kind, name)
    )


def conflict(kind: Kind, name: str | None, why: str) -> kmock.KubernetesError:
    message = f'Operation cannot be fulfilled on {kind.resource_name} "{name}": {why}'
    return api_error(409, "Conflict", message, _details(kind, name))


def invalid(kind: Kind, name: str | None, causes: list[str]) -> kmock.KubernetesError:
    message = f'{kind.kind}.{kind.group or "core"} "{name}" is invalid: {"; ".join(causes)}'
    details = _details(kind, name) | {
        "causes": [{"reason": "FieldValueInvalid", "message": cause} for cause in causes]
    }
    return api_error(422, "Invalid", message, details)


def bad_request(message: str) -> kmock.KubernetesError:
    return api_error(400, "BadRequest", message)


# --------------------------------------------------------------------------------------------
# Pure helpers: selectors, patches, pruning, names, defaults.
# --------------------------------------------------------------------------------------------

_LABEL_TERM = re.compile(
    r"^(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9_.-]*)|\s+(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?$"
)


def _split_terms(expr: str) -> list[str]:
    terms: list[str] = []
    depth = 0
    current = ""
    for char in expr:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term.strip() for term in terms if term.strip()]


def _requirement_holds(
    labels: Mapping[str, str], key: str, op: str, values: frozenset[str]
) -> bool:
    value = labels.get(key)
    if op == "exists":
        return value is not None
    if op == "!exists":
        return value is None
    if op in ("=", "==", "in"):
        return value in values
    return value not in values  # "!=", "notin": true also when the label is absent


def label_selector(expr: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate over labels for a Kubernetes label selector string; ValueError when invalid."""
    requirements: list[tuple[str, str, frozenset[str]]] = []
    for term in _split_terms(expr):
        match = _LABEL_TERM.match(term)
        if match is None or (match["neg"] and (match["op"] or match["set"])):
            raise ValueError(f"unable to parse requirement: {term!r}")
        if match["neg"]:
            requirements.append((match["key"], "!exists", frozenset()))
        elif match["op"]:
            requirements.append((match["key"], match["op"], frozenset([match["value"]])))
        elif match["set"]:
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            requirements.append((match["key"], match["set"], values))
        else:
            requirements.append((match["key"], "exists", frozenset()))

    def holds(labels: Mapping[str, str]) -> bool:
        return all(_requirement_holds(labels, *requirement) for requirement in requirements)

    return holds


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def field_selector(expr: str) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over objects for a field selector (``a.b=x``, ``a.b==x``, ``a.b!=x``)."""
    terms: list[tuple[str, bool, str]] = []
    for term in _split_terms(expr):
        match = re.match(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$", term)
        if match is None:
            raise ValueError(f"invalid field selector: {term!r}")
        path, op, value = match.groups()
        terms.append((path, op != "!=", value))

    def holds(obj: Mapping[str, Any]) -> bool:
        return all((_field_value(obj, path) == value) == equal for path, equal, value in terms)

    return holds


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: null deletes a key, lists and scalars are replaced whole."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    spec = MERGE_KEYS.get(field)
    if spec is None:
        return None
    for key in spec.split("|"):
        if any(isinstance(item, dict) and key in item for item in items):
            return key
    return spec.split("|")[0]


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch, for the list fields of the kinds the operator uses."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "replace":
        return copy.deepcopy({k: v for k, v in patch.items() if not k.startswith("$")})
    retain = patch.pop("$retainKeys", None)
    result = dict(target) if isinstance(target, dict) else {}
    deletions = {k: v for k, v in patch.items() if k.startswith("$deleteFromPrimitiveList/")}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        old = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in SET_LISTS:
            merged = list(old) if isinstance(old, list) else []
            merged += [item for item in value if item not in merged]
            result[key] = merged
        elif isinstance(value, list) and (merge_key := _merge_key(key, value + (old or []))):
            result[key] = _merge_list(old if isinstance(old, list) else [], value, merge_key)
        elif isinstance(value, dict) and value.get("$patch") == "delete":
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(old, value)
    for key, values in deletions.items():
        name = key.split("/", 1)[1]
        if isinstance(result.get(name), list):
            result[name] = [item for item in result[name] if item not in values]
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(old: list[Any], patch: list[Any], key: str) -> list[Any]:
    result = [copy.deepcopy(item) for item in old]
    for item in patch:
        if not isinstance(item, dict):
            result.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, cur in enumerate(result)
                if isinstance(cur, dict) and cur.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def prune(
    schema: Mapping[str, Any], value: Any, path: str = "", *, root: bool = False
) -> list[str]:
    """Drop fields a structural schema does not know (in place); return their paths."""
    dropped: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        for key in list(value):
            if (root or embedded) and key in ("apiVersion", "kind", "metadata"):
                continue
            if key in props:
                dropped += prune(props[key], value[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                dropped += prune(extra, value[key], f"{path}.{key}")
            elif not (preserve or extra is True):
                del value[key]
                dropped.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            dropped += prune(schema["items"], item, f"{path}[{index}]")
    return dropped


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _qualified_key_errors(key: str, what: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        errors.append(f"{what}: Invalid value: {key!r}: prefix part must be a DNS subdomain")
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        errors.append(
            f"{what}: Invalid value: {key!r}: name part must be 63 characters or less, alphanumeric, '-', '_' or '.'"
        )
    return errors


def metadata_errors(meta: Mapping[str, Any]) -> list[str]:
    """What ValidateObjectMeta rejects in labels, annotations, finalizers and ownerReferences."""
    errors: list[str] = []
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    for field, mapping in (("labels", labels), ("annotations", annotations)):
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise bad_request(f"metadata.{field}: values must be strings")
    for key, value in labels.items():
        errors += _qualified_key_errors(key, f"metadata.labels[{key}]")
        if len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(
                f"metadata.labels: Invalid value: {value!r}: a valid label must be 63 characters or less, "
                "empty or alphanumeric with '-', '_' or '.' inside"
            )
    for key in annotations:
        errors += _qualified_key_errors(key, f"metadata.annotations[{key}]")
    size = sum(len(k) + len(v) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        errors.append(
            f"metadata.annotations: Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"
        )
    for finalizer in meta.get("finalizers") or []:
        if not isinstance(finalizer, str):
            raise bad_request("metadata.finalizers: values must be strings")
        if "/" in finalizer:
            errors += _qualified_key_errors(finalizer, "metadata.finalizers")
        elif finalizer not in ("kubernetes", "orphan", "foregroundDeletion"):
            errors.append(
                f"metadata.finalizers: Invalid value: {finalizer!r}: name is neither a standard finalizer name nor is it fully qualified"
            )
    refs = meta.get("ownerReferences") or []
    for ref in refs:
        for required in ("apiVersion", "kind", "name", "uid"):
            if not (isinstance(ref, dict) and ref.get(required)):
                errors.append(
                    f"metadata.ownerReferences.{required}: Invalid value: must not be empty"
                )
    if sum(1 for ref in refs if isinstance(ref, dict) and ref.get("controller")) > 1:
        errors.append(
            "metadata.ownerReferences: Invalid value: only one reference can have Controller set to true"
        )
    return errors


def _image_pull_policy(image: str) -> str:
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    return "Always" if ":" not in last or last.endswith(":latest") else "IfNotPresent"


def default_pod_spec(spec: Body, *, restart_policy: str | None = "Always") -> None:
    if restart_policy:
        spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if not isinstance(container, dict):
            continue
        container.setdefault("imagePullPolicy", _image_pull_policy(str(container.get("image", ""))))
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports") or []:
            port.setdefault("protocol", "TCP")
    for volume in spec.get("volumes") or []:
        for source in ("secret", "configMap"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)


def _pod_spec_errors(spec: Any, where: str) -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where}: Required value"]
    errors = []
    containers = spec.get("containers") or []
    if not containers:
        errors.append(f"{where}.containers: Required value")
    names: set[str] = set()
    for i, container in enumerate([*(spec.get("initContainers") or []), *containers]):
        name = container.get("name", "")
        if not DNS1123_LABEL.match(name):
            errors.append(f"{where}.containers[{i}].name: Invalid value: {name!r}")
        if name in names:
            errors.append(f"{where}.containers[{i}].name: Duplicate value: {name!r}")
        names.add(name)
        if not container.get("image"):
            errors.append(f"{where}.containers[{i}].image: Required value")
    return errors


def _selector_matches(selector: Any, labels: Mapping[str, str]) -> bool:
    if not isinstance(selector, dict):
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, values = labels.get(expr.get("key", "")), expr.get("values") or []
        op = expr.get("operator")
        if (op == "In" and value not in values) or (op == "NotIn" and value in values):
            return False
        if (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))


def _version_priority(version: str) -> tuple[int, int, int]:
    match = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if match is None:
        return (-1, 0, 0)
    stability = {"alpha": 0, "beta": 1, None: 2}[match[2]]
    return (stability, int(match[1]), int(match[3] or 0))


def _truthy(value: str | None) -> bool:
    return value in TRUE_WORDS


def _owner_uids(obj: Body | None) -> set[str]:
    refs = (obj or {}).get("metadata", {}).get("ownerReferences") or []
    return {ref["uid"] for ref in refs if isinstance(ref, dict) and ref.get("uid")}


Matcher = Callable[[kmock.Request], bool]


def _reaction_order(payloads: list[kmock.Reaction]) -> list[kmock.Reaction]:
    """kmock's order of reactions: highest priority first, ties in the order they were added."""
    width = max((len(p.priorities) for p in payloads), default=0)

    def key(item: tuple[int, kmock.Reaction]) -> tuple[tuple[float, ...], int]:
        index, payload = item
        priority = tuple(-p for p in payload.priorities)
        return (priority + (0,) * (width - len(priority)), index)

    return [payload for _, payload in sorted(enumerate(payloads), key=key)]


def _in_view(view: kmock.View, request: kmock.Request) -> bool:
    return any(seen is request for seen in view)


def _quick_criteria(criteria: kmock.Criteria) -> Matcher:
    """The same test as kmock's ``criteria(request)``, quicker for the criteria the emulator
    itself registers (a method, an action, a path); any other criteria stay kmock's own."""
    allowed = {
        filtering.K8sCriteria: {"method", "action"},
        filtering.HTTPCriteria: {"method", "path"},
    }
    fields = allowed.get(type(criteria))
    if fields is None:
        return criteria
    used = {
        field.name: getattr(criteria, field.name)
        for field in attrs.fields(type(criteria))
        if getattr(criteria, field.name) is not ...
    }
    if not used or not set(used) <= fields:
        return criteria
    enums: list[tuple[str, enum.Enum]] = []
    path: re.Pattern[str] | str | None = None
    for name, pattern in used.items():
        if isinstance(pattern, enum.Enum):
            enums.append((name, pattern))
        elif (isinstance(pattern, re.Pattern) and isinstance(pattern.pattern, str)) or (
            isinstance(pattern, str) and not any(c in pattern for c in "*?[")
        ):
            path = pattern  # a regex must match the whole path; a glob without wildcards is ==
        else:
            return criteria

    def matches(request: kmock.Request) -> bool:
        for name, expected in enums:
            value = getattr(request, name)
            if value is not None and not isinstance(value, type(expected)):
                return bool(criteria(request))  # not what kmock parses requests into: ask kmock
            if value is not expected:  # kmock matches enums by name or value: both are unique
                return False
        if isinstance(path, str):
            return request.url.path == path
        return path is None or path.fullmatch(request.url.path) is not None

    return matches


# --------------------------------------------------------------------------------------------
# Kinds and changes.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What the server knows about a resource: names, scope, subresources, schema."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool
    custom: bool
    schema: Mapping[str, Any] | None = None
    shortnames: tuple[str, ...] = ()

    @property
    def key(self) -> KindKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource_name(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def tracks_generation(self) -> bool:
        return self.custom or (self.group, self.plural) in GENERATION_BUILTINS


@dataclass(frozen=True)
class Change:
    """One stored write, in resourceVersion order: what watches replay."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: KindKey
    namespace: str | None
    old: Body | None
    new: Body


class SchemaChecker:
    """One CRD version's structural schema and CEL rules, compiled once (tests.support.crdschema).

    Checking is what ``crdschema`` does, with savings that change no outcome: the JSON Schema
    validators are built once, one for each top-level field (spec, status...) and one for the
    rest of the root; and verdicts are remembered by the JSON of the values they judged (a
    field's validity; a CEL rule's on ``self``, and ``oldSelf`` for transition rules). So a
    write that leaves a field alone (a status update, Kopf's annotations) does not check that
    field again. Error messages still come from ``crdschema``.
    """

    MAX_REMEMBERED = 50_000

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.source = schema
        self.schema = dict(schema)
        whole = crdschema._to_jsonschema(self.schema, at_root=True)
        fields = whole.get("properties") or {}
        # The root keeps every keyword (required, additionalProperties...) but its fields' schemas.
        self.root = jsonschema.Draft202012Validator(
            {**whole, "properties": {name: {} for name in fields}}
        )
        self.fields = {name: jsonschema.Draft202012Validator(sub) for name, sub in fields.items()}
        self.rules = list(crdschema.cel_rules(self.schema))
        self._valid: dict[tuple[str, str], bool] = {}
        self._verdicts: dict[tuple[int, str], str | None] = {}

    def errors(self, obj: Body, old: Body | None) -> list[str]:
        if not self._structurally_valid(obj):
            return list(crdschema._structural_errors(self.schema, obj))
        # The API server runs CEL rules only on objects that passed the structural checks.
        errors: list[str] = []
        for index, (path, rule) in enumerate(self.rules):
            expr = rule["rule"]
            transition = "oldSelf" in expr
            if transition and old is None:
                continue
            for concrete, value in crdschema._values_at(obj, path):
                activation = {"self": value}
                if transition:
                    found, old_value = crdschema._lookup(old, concrete)
                    if not found:
                        continue
                    activation["oldSelf"] = old_value
                verdict = self._verdict(index, rule, activation)
                if verdict is not None:
                    errors.append(f"{crdschema._path(concrete)}: Invalid value: {verdict}")
        return errors

    def _structurally_valid(self, obj: Body) -> bool:
        if not self.root.is_valid(obj):
            return False
        for name, value in obj.items():
            validator = self.fields.get(name)
            if validator is None:
                continue
            key = (name, json.dumps(value))
            valid = self._valid.get(key)
            if valid is None:
                valid = validator.is_valid(value)
                if len(self._valid) >= self.MAX_REMEMBERED:
                    self._valid.clear()
                self._valid[key] = valid
            if not valid:
                return False
        return True

    def _verdict(self, index: int, rule: Mapping[str, Any], activation: Body) -> str | None:
        key = (index, json.dumps(activation))
        if key in self._verdicts:
            return self._verdicts[key]
        expr = rule["rule"]
        result = crdschema._program(expr).evaluate(
            {name: json_to_cel(value) for name, value in activation.items()}
        )
        verdict: str | None = None
        if isinstance(result, CELEvalError):
            verdict = f"rule {expr!r} could not be evaluated: {result}"
        elif not bool(result):
            verdict = rule.get("message", "failed rule: " + expr)
        if len(self._verdicts) >= self.MAX_REMEMBERED:
            self._verdicts.clear()
        self._verdicts[key] = verdict
        return verdict


@dataclass(frozen=True)
class ApiRequest:
    """One request the server received, for counting API calls per kind."""

    method: str
    path: str
    query: Mapping[str, str]
    action: str | None  # list, watch, fetch, create, update, replace, delete
    group: str | None
    plural: str | None
    namespace: str | None
    name: str | None
    subresource: str | None


# --------------------------------------------------------------------------------------------
# The emulator (kmock subclass): storage and HTTP semantics.
# --------------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with a real API server's storage rules (see the module doc)."""

    token: str | None = None
    validate: bool = True
    log_size: int = 50_000

    _mutex: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _changed: threading.Condition = attrs.field(init=False)
    _version: int = attrs.field(default=0, init=False)
    _store: dict[KindKey, dict[ObjKey, Body]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, tuple[KindKey, str | None, str]] = attrs.field(factory=dict, init=False)
    # Indexes of the store: objects by namespace, and the objects each uid owns (in write order).
    _in_namespace: Counter[str] = attrs.field(factory=Counter, init=False)
    _owned: dict[str, dict[tuple[KindKey, str | None, str], None]] = attrs.field(
        factory=dict, init=False
    )
    _schemas: dict[KindKey, Mapping[str, Any]] = attrs.field(factory=dict, init=False)
    _checkers: dict[KindKey, SchemaChecker] = attrs.field(factory=dict, init=False)
    _resource_keys: dict[KindKey, kmock.resource] = attrs.field(factory=dict, init=False)
    _custom: set[KindKey] = attrs.field(factory=set, init=False)
    _log: deque[Change] = attrs.field(init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _ips: Iterator[int] = attrs.field(factory=lambda: itertools.count(10), init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _tick: asyncio.Event | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _reaction_ids: tuple[int, ...] = attrs.field(default=(), init=False)
    _reaction_cache: list[tuple[kmock.Reaction, Matcher]] = attrs.field(factory=list, init=False)
    api_requests: list[ApiRequest] = attrs.field(factory=list, init=False)
    pruned: list[str] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._changed = threading.Condition(self._mutex)
        self._log = deque(maxlen=self.log_size)
        self.fallback[kmock.method.PUT] << self._serve_replace
        with warnings.catch_warnings():  # kmock 0.8 uses importlib.resources.read_binary
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        self._ensure_namespace("default")

    # ---- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._tick = asyncio.Event()
        return await super().__aenter__()

    def close_watches(self) -> None:
        """End every open watch stream (before the server shuts down)."""
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        if self._tick is not None:
            tick, self._tick = self._tick, asyncio.Event()
            tick.set()

    def _notify(self) -> None:
        """Tell watches (on the server's loop) and test waiters (any thread) that state changed."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._wake)

    def on_loop(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the server's event loop: every write happens on that one thread."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the emulator is not serving")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)

    # ---- kinds -----------------------------------------------------------------------------

    def resource_info(self, key: KindKey) -> kmock.ResourceInfo | None:
        """kmock's discovery record of a resource (looked up without kmock's key parsing)."""
        res = self._resource_keys.get(key)
        if res is None:
            res = self._resource_keys[key] = kmock.resource(*key)
        return self.resources._resources.get(res)

    def kind_for(self, group: str, version: str, plural: str) -> Kind | None:
        key = (group, version, plural)
        info = self.resource_info(key)
        if info is None:
            return None
        return Kind(
            group=group,
            version=version,
            plural=plural,
            kind=info.kind or plural.capitalize(),
            namespaced=bool(info.namespaced),
            status_subresource="status" in info.subresources,
            custom=key in self._custom,
            schema=self._schemas.get(key),
            shortnames=tuple(info.shortnames or ()),
        )

    def known_kinds(self) -> list[Kind]:
        kinds = []
        with self._mutex:
            resources = list(self.resources._resources)
        for res in resources:
            if res.group is not None and res.version is not None and res.plural is not None:
                kind = self.kind_for(res.group, res.version, res.plural)
                if kind is not None:
                    kinds.append(kind)
        return kinds

    def _request_kind(self, request: kmock.Request) -> Kind:
        res = request.resource
        if res is None or res.plural is None or res.version is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        kind = self.kind_for(res.group or "", res.version, res.plural)
        if kind is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        if not kind.namespaced and request.namespace is not None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        return kind

    def _register_crd(self, crd: Body) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            key = (spec["group"], version["name"], names["plural"])
            self.resources[f"{key[0]}/{key[1]}/{key[2]}"] = kmock.ResourceInfo(
                kind=names.get("kind"),
                singular=names.get("singular") or names.get("kind", "").lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs=ALL_VERBS,
                shortnames=names.get("shortNames") or [],
                categories=names.get("categories") or [],
                subresources=["status"] if "status" in (version.get("subresources") or {}) else [],
            )
            self._custom.add(key)
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema:
                self._schemas[key] = schema

    def _unregister_crd(self, crd: Body) -> None:
        spec = crd.get("spec") or {}
        for version in spec.get("versions") or []:
            key = (spec["group"], version["name"], spec["names"]["plural"])
            kind = self.kind_for(*key)
            if kind is not None:
                for ns, name in list(self._store.get(key, {})):
                    self._remove(kind, ns, name)
            with contextlib.suppress(KeyError):
                del self.resources[f"{key[0]}/{key[1]}/{key[2]}"]
            self._custom.discard(key)
            self._schemas.pop(key, None)
            self._checkers.pop(key, None)

    # ---- reading (any thread) --------------------------------------------------------------

    def read(self, kind: Kind, namespace: str | None, name: str) -> Body | None:
        with self._mutex:
            obj = self._store.get(kind.key, {}).get((namespace if kind.namespaced else None, name))
            return copy.deepcopy(obj) if obj is not None else None

    def select(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        labels: str = "",
        fields: str = "",
    ) -> list[Body]:
        """Objects of a kind (in a namespace, or all), filtered by selectors, in etcd key order."""
        try:
            by_labels = label_selector(labels)
            by_fields = field_selector(fields)
        except ValueError as e:
            raise bad_request(str(e)) from e
        with self._mutex:
            bucket = self._store.get(kind.key, {})
            found = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(
                    bucket.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
                )
                if (namespace is None or ns == namespace)
                and by_labels(obj["metadata"].get("labels") or {})
                and by_fields(obj)
            ]
        return found

    @property
    def version(self) -> int:
        """A counter bumped on every stored change (for waiters)."""
        return self._version

    def wait_changed(self, seen: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen, timeout=timeout)

    # ---- writing (any thread; the same code serves HTTP requests and test helpers) -------

    def _next_rv(self) -> int:
        self._last_rv += 1
        return self._last_rv

    def _record(self, kind: Kind, type_: str, old: Body | None, new: Body) -> None:
        if len(self._log) == self._log.maxlen:
            self._compacted_rv = self._log[0].rv
        ns = new["metadata"].get("namespace")
        self._log.append(Change(self._last_rv, type_, kind.key, ns, old, new))

    def _changes_since(self, position: int) -> list[Change]:
        """The logged changes after resourceVersion ``position``, oldest first (newest are last)."""
        newer: list[Change] = []
        for change in reversed(self._log):
            if change.rv <= position:
                break
            newer.append(change)
        return newer[::-1]

    def _ensure_namespace(self, name: str) -> None:
        kind = self.kind_for(*NAMESPACE_KEY)
        if kind is None or (None, name) in self._store.get(NAMESPACE_KEY, {}):
            return
        self._insert(kind, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def store_create(
        self,
        kind: Kind,
        namespace: str | None,
        body: Any,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Body:
        with self._mutex:
            created = self._create(kind, namespace, body, params or {})
        self._notify()
        return created

    def _create(
        self, kind: Kind, namespace: str | None, body: Any, params: Mapping[str, str]
    ) -> Body:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request(
                "the body of the request was in an unknown format: expected an object"
            )
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            if namespace is None:
                raise api_error(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if obj.get("kind") not in (None, kind.kind) or obj.get("apiVersion") not in (
            None,
            kind.api_version,
        ):
            raise bad_request(
                f"the API version or kind in the body does not match {kind.api_version}/{kind.kind}"
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    kind, "", ["metadata.name: Required value: name or generateName is required"]
                )
            suffix = "".join(random.choices(GENERATE_ALPHABET, k=5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        name = meta["name"]
        if meta.get("resourceVersion"):
            raise invalid(
                kind, name, ["metadata.resourceVersion: Invalid value: must be empty on create"]
            )
        if (meta.get("namespace"), name) in self._store.get(kind.key, {}):
            raise api_error(
                409,
                "AlreadyExists",
                f'{kind.resource_name} "{name}" already exists',
                _details(kind, name),
            )
        if namespace is not None and kind.namespaced:
            ns_obj = self._store.get(NAMESPACE_KEY, {}).get((None, namespace))
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                raise api_error(
                    403,
                    "Forbidden",
                    f"unable to create new content in namespace {namespace} because it is being terminated",
                )
            self._ensure_namespace(namespace)
        return self._insert(kind, obj, params=params)

    def _insert(self, kind: Kind, obj: Body, params: Mapping[str, str] | None = None) -> Body:
        meta = obj["metadata"]
        for field in (
            "uid",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if kind.tracks_generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        obj["apiVersion"] = kind.api_version
        obj["kind"] = kind.kind
        if kind.status_subresource:
            obj.pop("status", None)
        self._admit(kind, None, obj, params or {}, subresource=None)
        self._next_rv()
        meta["resourceVersion"] = str(self._last_rv)
        self._store.setdefault(kind.key, {})[(meta.get("namespace"), meta["name"])] = obj
        self._uids[meta["uid"]] = (kind.key, meta.get("namespace"), meta["name"])
        self._track(kind.key, None, obj)
        self._record(kind, "ADDED", None, obj)
        if kind.key == CRD_KEY:
            self._register_crd(obj)
        if meta.get("ownerReferences") and not self._live_owner_refs(obj):
            self._delete(kind, meta.get("namespace"), meta["name"], policy="Background")
        return copy.deepcopy(obj)

    def store_update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        mutate: Callable[[Body], Any],
        *,
        subresource: str | None = None,
        replace: bool = False,
        params: Mapping[str, str] | None = None,
    ) -> Body:
        """Apply ``mutate(old) -> candidate`` the way an update or a patch is applied."""
        with self._mutex:
            updated = self._update(
                kind, namespace, name, mutate, subresource, replace, params or {}
            )
        self._notify()
        return updated

    def _update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        mutate: Callable[[Body], Any],
        subresource: str | None,
        replace: bool,
        params: Mapping[str, str],
    ) -> Body:
        if subresource not in (None, "status") or (
            subresource == "status" and not kind.status_subresource
        ):
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        ns = namespace if kind.namespaced else None
        old = self._store.get(kind.key, {}).get((ns, name))
        if old is None:
            raise not_found(kind, name)
        candidate = mutate(copy.deepcopy(old))
        if not isinstance(candidate, dict) or not isinstance(candidate.get("metadata", {}), dict):
            raise bad_request(
                "the body of the request was in an unknown format: expected an object"
            )
        old_meta = old["metadata"]
        rv = (candidate.get("metadata") or {}).get("resourceVersion")
        if replace and not rv and kind.custom:
            raise invalid(
                kind,
                name,
                ["metadata.resourceVersion: Invalid value: 0: must be specified for an update"],
            )
        if rv and rv != old_meta["resourceVersion"]:
            raise conflict(
                kind,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if subresource == "status":
            new = copy.deepcopy(old)
            if candidate.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = candidate["status"]
        else:
            new = candidate
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name or meta.get("namespace", ns) != ns:
                raise bad_request("the name or namespace of the object does not match the request")
            new["apiVersion"], new["kind"] = kind.api_version, kind.kind
            if kind.status_subresource:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            for field in (
                "name",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ):
                if field in old_meta:
                    meta[field] = old_meta[field]
                else:
                    meta.pop(field, None)
            if ns is not None:
                meta["namespace"] = ns
            meta.pop("managedFields", None)
            if old_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    raise invalid(
                        kind,
                        name,
                        [
                            f"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}"
                        ],
                    )
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        self._admit(kind, old, new, params, subresource=subresource)
        if new == old:
            return copy.deepcopy(
                old
            )  # a no-op write is not stored: no new resourceVersion, no event
        if kind.tracks_generation and self._spec_of(kind, new) != self._spec_of(kind, old):
            new["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
        return self._store_update(kind, old, new)

    def _store_update(self, kind: Kind, old: Body, new: Body) -> Body:
        meta = new["metadata"]
        self._next_rv()
        meta["resourceVersion"] = str(self._last_rv)
        key = (meta.get("namespace"), meta["name"])
        self._store[kind.key][key] = new
        self._track(kind.key, old, new)
        self._record(kind, "MODIFIED", old, new)
        # A terminating namespace waits for its objects (its spec.finalizers), not for metadata.
        waits_for_content = kind.key == NAMESPACE_KEY and self._namespace_has_objects(key[1])
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not waits_for_content:
            self._remove(kind, key[0], key[1])
        elif (
            meta.get("ownerReferences")
            and meta["ownerReferences"] != old["metadata"].get("ownerReferences")
            and not self._live_owner_refs(new)
        ):
            self._delete(kind, key[0], key[1], policy="Background")
        return copy.deepcopy(new)

    @staticmethod
    def _spec_of(kind: Kind, body: Body) -> Any:
        if kind.custom or kind.key == CRD_KEY:
            skip = {"metadata", "apiVersion", "kind"} | (
                {"status"} if kind.status_subresource else set()
            )
            return {k: v for k, v in body.items() if k not in skip}
        return body.get("spec")

    def store_delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        policy: str | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> Body:
        with self._mutex:
            deleted = self._delete(
                kind, namespace, name, policy=policy, preconditions=preconditions
            )
        self._notify()
        return deleted

    def _delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        policy: str | None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> Body:
        ns = namespace if kind.namespaced else None
        obj = self._store.get(kind.key, {}).get((ns, name))
        if obj is None:
            raise not_found(kind, name)
        meta = obj["metadata"]
        for field in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != meta.get(field):
                raise conflict(
                    kind,
                    name,
                    f"Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {meta.get(field)}",
                )
        if policy is None:
            # batch/v1 Jobs (and core ReplicationControllers) still default to orphaning their pods.
            policy = (
                "Orphan"
                if kind.key in {("batch", "v1", "jobs"), ("", "v1", "replicationcontrollers")}
                else "Background"
            )
        if policy not in ("Orphan", "Background", "Foreground"):
            raise bad_request(f"unsupported propagationPolicy {policy!r}")
        if policy == "Orphan":
            self._orphan(meta["uid"])
        elif policy == "Foreground":
            for dep_kind, dep_ns, dep_name in self._dependents(meta["uid"]):
                with contextlib.suppress(kmock.KubernetesError):
                    self._delete(dep_kind, dep_ns, dep_name, policy="Foreground")
        if kind.key == NAMESPACE_KEY:
            for key, bucket in list(self._store.items()):
                for obj_ns, obj_name in list(bucket):
                    inner = self.kind_for(*key)
                    if (
                        obj_ns == name
                        and inner is not None
                        and (obj_ns, obj_name) in self._store.get(key, {})
                    ):
                        self._delete(inner, obj_ns, obj_name, policy="Background")
            if self._namespace_has_objects(name):
                return self._mark_terminating(kind, obj, extra_status={"phase": "Terminating"})
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return copy.deepcopy(obj)
            return self._mark_terminating(kind, obj)
        return self._remove(kind, ns, name)

    def _mark_terminating(self, kind: Kind, obj: Body, extra_status: Body | None = None) -> Body:
        new = copy.deepcopy(obj)
        meta = new["metadata"]
        meta.setdefault("deletionTimestamp", now_rfc3339())
        meta.setdefault("deletionGracePeriodSeconds", 0)
        if kind.tracks_generation:
            meta["generation"] = int(meta.get("generation", 1)) + 1
        if extra_status:
            new["status"] = {**(new.get("status") or {}), **extra_status}
        if new == obj:
            return copy.deepcopy(obj)
        return self._store_update(kind, obj, new)

    def _remove(self, kind: Kind, namespace: str | None, name: str) -> Body:
        obj = self._store[kind.key].pop((namespace, name))
        self._uids.pop(obj["metadata"]["uid"], None)
        self._track(kind.key, obj, None)
        gone = copy.deepcopy(obj)
        self._next_rv()
        gone["metadata"]["resourceVersion"] = str(self._last_rv)
        self._record(kind, "DELETED", obj, gone)
        if kind.key == CRD_KEY:
            self._unregister_crd(obj)
        self._collect_garbage(obj["metadata"]["uid"])
        if namespace is not None and not self._namespace_has_objects(namespace):
            ns_obj = self._store.get(NAMESPACE_KEY, {}).get((None, namespace))
            ns_kind = self.kind_for(*NAMESPACE_KEY)
            if (
                ns_obj is not None
                and ns_kind is not None
                and ns_obj["metadata"].get("deletionTimestamp")
            ):
                self._remove(ns_kind, None, namespace)
        return gone

    def _track(self, key: KindKey, old: Body | None, new: Body | None) -> None:
        """Keep the objects counted by namespace, and indexed by owner uid, as the store changes."""
        meta = (new or old or {})["metadata"]
        where = (key, meta.get("namespace"), meta["name"])
        if where[1] is not None and (old is None) != (new is None):
            self._in_namespace[where[1]] += 1 if old is None else -1
        before, after = _owner_uids(old), _owner_uids(new)
        for uid in before - after:
            owned = self._owned[uid]
            del owned[where]
            if not owned:
                del self._owned[uid]
        for uid in after - before:
            self._owned.setdefault(uid, {})[where] = None

    def _namespace_has_objects(self, namespace: str) -> bool:
        return self._in_namespace[namespace] > 0

    def _dependents(self, uid: str) -> list[tuple[Kind, str | None, str]]:
        found = []
        for key, ns, name in list(self._owned.get(uid, ())):
            kind = self.kind_for(*key)
            if kind is not None:
                found.append((kind, ns, name))
        return found

    def _live_owner_refs(self, obj: Body) -> list[Body]:
        """The ownerReferences whose owner exists (same name and uid, same namespace or cluster)."""
        live = []
        for ref in obj["metadata"].get("ownerReferences") or []:
            where = self._uids.get(ref.get("uid", ""))
            if where is None:
                continue
            _, owner_ns, owner_name = where
            if owner_name == ref.get("name") and owner_ns in (
                None,
                obj["metadata"].get("namespace"),
            ):
                live.append(ref)
        return live

    def _collect_garbage(self, uid: str) -> None:
        for kind, ns, name in self._dependents(uid):
            obj = self._store.get(kind.key, {}).get((ns, name))
            if obj is None:
                continue
            live = self._live_owner_refs(obj)
            if live:
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = live
                self._store_update(kind, obj, new)
            else:
                with contextlib.suppress(kmock.KubernetesError):
                    self._delete(kind, ns, name, policy="Background")

    def _orphan(self, uid: str) -> None:
        for kind, ns, name in self._dependents(uid):
            obj = self._store[kind.key][(ns, name)]
            new = copy.deepcopy(obj)
            refs = [ref for ref in obj["metadata"]["ownerReferences"] if ref.get("uid") != uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                del new["metadata"]["ownerReferences"]
            self._store_update(kind, obj, new)

    # ---- admission: defaults, pruning, validation, immutability -------------------------

    def _admit(
        self,
        kind: Kind,
        old: Body | None,
        new: Body,
        params: Mapping[str, str],
        *,
        subresource: str | None,
    ) -> None:
        name = new["metadata"].get("name")
        errors = metadata_errors(new["metadata"])
        errors += self._name_errors(kind, name or "")
        if errors:
            raise invalid(kind, name, errors)
        if kind.custom and kind.schema is not None:
            self._admit_custom(kind, old, new, params)
        elif not kind.custom:
            self._admit_builtin(kind, old, new, subresource=subresource)

    @staticmethod
    def _name_errors(kind: Kind, name: str) -> list[str]:
        if kind.key in EVENT_KEYS:
            return []
        if kind.key in {("", "v1", "services"), NAMESPACE_KEY}:
            pattern, limit = (DNS1035_LABEL if kind.plural == "services" else DNS1123_LABEL), 63
        else:
            pattern, limit = DNS1123_SUBDOMAIN, (63 if kind.plural == "jobs" else 253)
        if len(name) > limit or not pattern.match(name):
            return [
                f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 name of at most {limit} characters"
            ]
        return []

    def _admit_custom(
        self, kind: Kind, old: Body | None, new: Body, params: Mapping[str, str]
    ) -> None:
        assert kind.schema is not None
        schema = dict(kind.schema)
        dropped = prune(schema, new, root=True)
        name = new["metadata"].get("name")
        if dropped:
            if params.get("fieldValidation") == "Strict":
                raise invalid(
                    kind,
                    name,
                    [f'{path[1:]}: unknown field "{path.rsplit(".", 1)[-1]}"' for path in dropped],
                )
            self.pruned += [
                f"{kind.plural}/{new['metadata'].get('namespace')}/{name}: {path}"
                for path in dropped
            ]
        crdschema.apply_defaults(schema, new)
        if not self.validate:
            return
        # Validate what the schema describes: pruning left only known fields, or ones it preserves.
        top = set(schema.get("properties") or {})
        checked = {k: v for k, v in new.items() if k in top}
        checker = self._checkers.get(kind.key)
        if checker is None or checker.source is not kind.schema:
            checker = self._checkers[kind.key] = SchemaChecker(kind.schema)
        errors = checker.errors(checked, old)
        if errors:
            raise invalid(kind, name, errors)

    def _admit_builtin(
        self, kind: Kind, old: Body | None, new: Body, *, subresource: str | None
    ) -> None:
        name = new["metadata"].get("name")
        spec = new.get("spec")
        errors: list[str] = []
        if subresource is None:
            self._default_builtin(kind, new, create=old is None)
        if old is not None and subresource is None:
            errors += self._immutability_errors(kind, old, new)
            if kind.plural == "services" and isinstance(spec, dict):
                old_spec = old.get("spec") or {}
                for field in ("clusterIP", "clusterIPs"):
                    if field in old_spec and not spec.get(field):
                        spec[field] = copy.deepcopy(old_spec[field])
        if (kind.group, kind.plural) in {
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("apps", "replicasets"),
        }:
            template = (spec or {}).get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not _selector_matches((spec or {}).get("selector"), labels):
                errors.append(
                    "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
                )
            errors += _pod_spec_errors(template.get("spec"), "spec.template.spec")
        elif kind.key == ("batch", "v1", "jobs"):
            template = (spec or {}).get("template") or {}
            policy = (template.get("spec") or {}).get("restartPolicy")
            if policy not in ("Never", "OnFailure"):
                errors.append(
                    f'spec.template.spec.restartPolicy: Unsupported value: "{policy}": supported values: "OnFailure", "Never"'
                )
            errors += _pod_spec_errors(template.get("spec"), "spec.template.spec")
        elif kind.key == ("", "v1", "pods"):
            errors += _pod_spec_errors(spec, "spec")
        if errors:
            raise invalid(kind, name, errors)
        if self.validate and (kind.group, kind.plural) in VALIDATED_BUILTINS:
            try:
                kubernetes_validate.validate(new, KUBERNETES_VERSION, strict=False)
            except kubernetes_validate.ValidationError as e:
                raise invalid(kind, name, [str(e).split("\n", 1)[0]]) from e
            except (
                kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.InvalidSchemaError,
            ):
                pass

    def _default_builtin(self, kind: Kind, obj: Body, *, create: bool) -> None:
        """Fill in what a real server defaults; status and generated fields only on create."""
        spec = obj.get("spec")
        uid = obj["metadata"]["uid"]
        if kind.group == "apps" and isinstance(spec, dict):
            if kind.plural in ("deployments", "statefulsets", "replicasets"):
                spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            if kind.plural == "deployments":
                spec.setdefault("progressDeadlineSeconds", 600)
                spec.setdefault(
                    "strategy",
                    {
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                    },
                )
            template = spec.get("template")
            if isinstance(template, dict) and isinstance(template.get("spec"), dict):
                default_pod_spec(template["spec"])
        elif kind.key == ("batch", "v1", "jobs") and isinstance(spec, dict):
            if create and spec.get("selector") and not spec.get("manualSelector"):
                raise invalid(
                    kind,
                    obj["metadata"]["name"],
                    ["spec.selector: Invalid value: `selector` not auto-generated"],
                )
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
            job_labels = {
                "batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": obj["metadata"]["name"],
                "controller-uid": uid,
                "job-name": obj["metadata"]["name"],
            }
            template = spec.setdefault("template", {})
            if create and not spec.get("manualSelector"):
                spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            if create and isinstance(template, dict):
                template.setdefault("metadata", {}).setdefault("labels", {}).update(job_labels)
            if isinstance(template, dict) and isinstance(template.get("spec"), dict):
                default_pod_spec(template["spec"], restart_policy=None)
        elif kind.key == ("", "v1", "pods") and isinstance(spec, dict):
            default_pod_spec(spec)
            if create:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif kind.key == ("", "v1", "services") and isinstance(spec, dict):
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("internalTrafficPolicy", "Cluster")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            if create and spec.get("clusterIP") != "None":
                ip = str(ipaddress.IPv4Address("10.96.0.0") + next(self._ips))
                spec.setdefault("clusterIP", ip)
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
            for port in spec.get("ports") or []:
                port.setdefault("protocol", "TCP")
                port.setdefault("targetPort", port.get("port"))
            if create:
                obj["status"] = {"loadBalancer": {}}
        elif kind.key == ("", "v1", "persistentvolumeclaims") and isinstance(spec, dict):
            spec.setdefault("volumeMode", "Filesystem")
            if create:
                obj["status"] = {"phase": "Pending"}
        elif kind.key == NAMESPACE_KEY and create:
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj[
                "metadata"
            ]["name"]
        elif kind.key == CRD_KEY and isinstance(spec, dict) and create:
            names = spec.get("names") or {}
            obj["status"] = {
                "acceptedNames": names,
                "storedVersions": [
                    v["name"] for v in spec.get("versions") or [] if v.get("storage")
                ],
                "conditions": [
                    {
                        "type": "NamesAccepted",
                        "status": "True",
                        "reason": "NoConflicts",
                        "lastTransitionTime": now_rfc3339(),
                    },
                    {
                        "type": "Established",
                        "status": "True",
                        "reason": "InitialNamesAccepted",
                        "lastTransitionTime": now_rfc3339(),
                    },
                ],
            }

    @staticmethod
    def _immutability_errors(kind: Kind, old: Body, new: Body) -> list[str]:
        old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
        errors = []
        if kind.group == "apps" and old_spec.get("selector") != new_spec.get("selector"):
            errors.append("spec.selector: Invalid value: field is immutable")
        if kind.key == ("batch", "v1", "jobs"):
            for field in ("template", "selector", "completionMode"):
                if old_spec.get(field) != new_spec.get(field):
                    errors.append(f"spec.{field}: Invalid value: field is immutable")
        if kind.key == ("", "v1", "persistentvolumeclaims"):

            def without_requests(spec: Body) -> Body:
                spec = copy.deepcopy(spec)
                (spec.get("resources") or {}).pop("requests", None)
                spec.pop("volumeAttributesClassName", None)
                return spec

            if without_requests(old_spec) != without_requests(new_spec):
                errors.append(
                    "spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
                )
            old_size = ((old_spec.get("resources") or {}).get("requests") or {}).get("storage")
            new_size = ((new_spec.get("resources") or {}).get("requests") or {}).get("storage")
            if old_size and new_size and _quantity(new_size) < _quantity(old_size):
                errors.append(
                    "spec.resources.requests.storage: Forbidden: field can not be less than previous value"
                )
        if kind.key == ("", "v1", "services"):
            for field in ("clusterIP",):
                if new_spec.get(field) and old_spec.get(field) != new_spec.get(field):
                    errors.append(f"spec.{field}: Invalid value: field is immutable")
        if kind.key == ("", "v1", "pods"):

            def without_images(spec: Body) -> Body:
                spec = copy.deepcopy(spec)
                for container in [
                    *(spec.get("containers") or []),
                    *(spec.get("initContainers") or []),
                ]:
                    container.pop("image", None)
                spec.pop("activeDeadlineSeconds", None)
                spec.pop("tolerations", None)
                return spec

            if without_images(old_spec) != without_images(new_spec):
                errors.append(
                    "spec: Forbidden: pod updates may not change fields other than images, activeDeadlineSeconds and tolerations"
                )
        return errors

    # ---- HTTP -----------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = NAMESPACE_PATH.match(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        # kmock cannot parse /api/v1/namespaces (it answers 500): build the request here.
        await raw_request.read()
        try:
            request = await self._parse_namespace_request(raw_request, match["name"], match["sub"])
            self._requests.append(request)
            return await self._handle(request)
        except Exception as e:
            if isinstance(e, rendering.StreamingError) and e.__cause__ is not None:
                e = e.__cause__  # type: ignore[assignment]
            if self._errors:
                self._errors[-1].append(e)
            return await self._render_error(e)

    async def _parse_namespace_request(
        self, raw: aiohttp.web.BaseRequest, name: str | None, sub: str | None
    ) -> kmock.Request:
        try:
            data = await raw.json() if raw.can_read_body or raw.body_exists else None
        except ValueError:
            data = None
        query = dict(raw.query)
        method = raw.method.upper()
        if method == "GET" and _truthy(query.get("watch")):
            action: kmock.action | None = kmock.action.WATCH
        elif name is None:
            action = {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
        else:
            action = {
                "GET": kmock.action.FETCH,
                "PATCH": kmock.action.UPDATE,
                "DELETE": kmock.action.DELETE,
            }.get(method)
        return kmock.Request(
            id=len(self._requests),
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=query,
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=await raw.read(),
            text=await raw.text(),
            data=data,
            action=action,
            resource=kmock.resource("", "v1", "namespaces"),
            namespace=None,
            name=name,
            subresource=sub,
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        action = request.action.value.lower() if request.action is not None else None
        if request.method == kmock.method.PUT and request.name is not None:
            action = "replace"
        with self._mutex:
            self.api_requests.append(
                ApiRequest(
                    method=request.method.value,
                    path=request.url.path,
                    query=dict(request.params),
                    action=action,
                    group=res.group if res is not None else None,
                    plural=res.plural if res is not None else None,
                    namespace=request.namespace,
                    name=request.name,
                    subresource=request.subresource,
                )
            )
        if (
            self.token is not None
            and request.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            raise api_error(401, "Unauthorized", "Unauthorized")
        # Not KubernetesEmulator._handle: it writes kmock's store before any reaction answers.
        return await self._react(request)

    async def _react(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """kmock's RawHandler._handle, without its cost per request that grows with the history.

        kmock decides whether a reaction sees a request by iterating the reaction's view over
        every request received so far, so each request costs O(requests so far) for each
        reaction tried. The reactions here are plain chains of criteria (``kmock["patch", ...]``,
        ``fallback[...]``): for those, the request alone decides. Other views (slices, groups,
        exclusions, streams) keep kmock's own check, which needs the history.
        """
        for payload, sees in self._reactions():
            if payload._disabled.is_set() or not sees(request):
                continue
            try:
                return await payload(request)
            except rendering.ReactionMismatchError:  # either mismatch or depletion
                payload._disabled.set()
            except NotImplementedError:  # matched, but nothing to respond with
                pass
        raise NotImplementedError("no reaction matches the request")

    def _reactions(self) -> list[tuple[kmock.Reaction, Matcher]]:
        """The reactions in the order kmock tries them, each with its test; rebuilt on change."""
        ids = tuple(map(id, self._payloads))
        if ids != self._reaction_ids:  # the cache holds the payloads, so their ids stay unique
            self._reaction_cache = [(p, self._matcher(p)) for p in _reaction_order(self._payloads)]
            self._reaction_ids = ids
        return self._reaction_cache

    def _matcher(self, payload: kmock.Reaction) -> Matcher:
        checks: list[Matcher] = []
        view = payload._source
        while view is not self:
            if type(view) is kmock.Priority:
                view = view._source
            elif type(view) is kmock.Filter:
                checks.append(_quick_criteria(view.criteria))
                view = view._source
            elif isinstance(view, kmock.Root):
                return lambda request: False  # another handler's requests
            else:  # slices, groups, exclusions, streams: kmock's own test, over the history
                checks.append(functools.partial(_in_view, view))
                break
        return lambda request: all(check(request) for check in checks)

    async def _serve_list(self, request: kmock.Request) -> rendering.Payload:
        if _truthy(request.params.get("watch")):
            return self._serve_watch(request)
        kind = self._request_kind(request)
        params = request.params
        items = self.select(
            kind,
            request.namespace,
            labels=params.get("labelSelector", ""),
            fields=params.get("fieldSelector", ""),
        )
        meta: Body = {"resourceVersion": str(self._last_rv)}
        limit = int(params.get("limit") or 0)
        if params.get("continue"):
            token = json.loads(base64.urlsafe_b64decode(params["continue"]))
            meta["resourceVersion"] = token["rv"]
            items = items[token["start"] :]
            offset = token["start"]
        else:
            offset = 0
        if limit and len(items) > limit:
            token = {"rv": meta["resourceVersion"], "start": offset + limit}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": meta,
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[rendering.Payload]:
        kind = self._request_kind(request)
        params = request.params
        fields = params.get("fieldSelector", "")
        if request.name is not None:
            fields = ",".join(filter(None, [fields, f"metadata.name={request.name}"]))
        try:
            by_labels = label_selector(params.get("labelSelector", ""))
            by_fields = field_selector(fields)
        except ValueError as e:
            raise bad_request(str(e)) from e
        since = params.get("resourceVersion") or ""
        initial = _truthy(params.get("sendInitialEvents"))
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        assert self._loop is not None
        deadline = None if timeout is None else self._loop.time() + timeout
        with self._mutex:
            gone = False
            if since in ("", "0") or initial:
                position = self._last_rv
                backlog = self.select(
                    kind, request.namespace, labels=params.get("labelSelector", ""), fields=fields
                )
            else:
                try:
                    position = int(since)
                except ValueError as e:
                    raise bad_request(f"invalid resource version {since!r}") from e
                gone = position < self._compacted_rv
                backlog = []

        def visible(obj: Body | None) -> bool:
            if obj is None or (
                request.namespace is not None
                and obj["metadata"].get("namespace") != request.namespace
            ):
                return False
            return by_labels(obj["metadata"].get("labels") or {}) and by_fields(obj)

        yield b""  # send the headers now: watches stay open with nothing to say
        if gone:
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "code": 410,
                "reason": "Expired",
                "message": f"too old resource version: {since} ({self._compacted_rv})",
            }
            yield {"type": "ERROR", "object": status}
            return
        for obj in backlog:
            yield {"type": "ADDED", "object": obj}
        if initial and _truthy(params.get("allowWatchBookmarks")):
            marker = {
                "kind": kind.kind,
                "apiVersion": kind.api_version,
                "metadata": {
                    "resourceVersion": str(position),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            }
            yield {"type": "BOOKMARK", "object": marker}
        while not self._closing:
            with self._mutex:
                changes = self._changes_since(position)
                tick = self._tick
            for change in changes:
                position = change.rv
                if change.key != kind.key:
                    continue
                was, now = visible(change.old), visible(change.new)
                if change.type == "ADDED" and now:
                    yield {"type": "ADDED", "object": change.new}
                elif change.type == "DELETED" and (was or now):
                    yield {"type": "DELETED", "object": change.new}
                elif change.type == "MODIFIED" and (was or now):
                    yield {
                        "type": "MODIFIED" if was and now else ("ADDED" if now else "DELETED"),
                        "object": change.new,
                    }
            raw = request._raw_request
            if raw is not None and (raw.transport is None or raw.transport.is_closing()):
                return
            assert tick is not None
            remaining = None if deadline is None else deadline - self._loop.time()
            if remaining is not None and remaining <= 0:
                return
            try:
                await asyncio.wait_for(tick.wait(), timeout=remaining)
            except TimeoutError:
                return

    async def _serve_fetch(self, request: kmock.Request) -> rendering.Payload:
        if _truthy(request.params.get("watch")):
            return self._serve_watch(request)
        kind = self._request_kind(request)
        assert request.name is not None
        if request.subresource not in (None, "status"):
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        obj = self.read(kind, request.namespace, request.name)
        if obj is None:
            raise not_found(kind, request.name)
        return obj

    async def _serve_create(self, request: kmock.Request) -> rendering.Payload:
        kind = self._request_kind(request)
        if request.subresource is not None:
            raise api_error(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        created = self.store_create(kind, request.namespace, request.data, params=request.params)
        return rendering.Response(status=201, payload=created)

    async def _serve_update(self, request: kmock.Request) -> rendering.Payload:
        kind = self._request_kind(request)
        assert request.name is not None
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = request.data
        mutate: Callable[[Body], Any]
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise bad_request("a JSON patch must be a list of operations")

            def mutate(old: Body) -> Any:
                try:
                    return jsonpatch.apply_patch(old, patch, in_place=False)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                    raise invalid(
                        kind, request.name, [f"the JSON patch could not be applied: {e}"]
                    ) from e

        elif content_type == "application/merge-patch+json":
            mutate = lambda old: merge_patch(old, patch)  # noqa: E731
        elif content_type == "application/strategic-merge-patch+json":
            if kind.custom:
                raise api_error(
                    415,
                    "UnsupportedMediaType",
                    "strategic merge patch is not supported for custom resources; use a merge patch or a JSON patch",
                )
            mutate = lambda old: strategic_merge_patch(old, patch)  # noqa: E731
        else:
            raise api_error(
                415,
                "UnsupportedMediaType",
                f"the media type {content_type!r} of the patch is not supported",
            )
        if not isinstance(patch, (dict, list)):
            raise bad_request("the patch body must be JSON")
        return self.store_update(
            kind,
            request.namespace,
            request.name,
            mutate,
            subresource=request.subresource,
            params=request.params,
        )

    async def _serve_replace(self, request: kmock.Request) -> rendering.Payload:
        kind = self._request_kind(request)
        if request.name is None:
            raise api_error(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        body = request.data
        return self.store_update(
            kind,
            request.namespace,
            request.name,
            lambda _: copy.deepcopy(body),
            subresource=request.subresource,
            replace=True,
            params=request.params,
        )

    async def _serve_delete(self, request: kmock.Request) -> rendering.Payload:
        kind = self._request_kind(request)
        assert request.name is not None
        options = request.data if isinstance(request.data, dict) else {}
        policy = options.get("propagationPolicy") or request.params.get("propagationPolicy")
        if options.get("orphanDependents") is True:
            policy = "Orphan"
        return self.store_delete(
            kind,
            request.namespace,
            request.name,
            policy=policy,
            preconditions=options.get("preconditions"),
        )

    async def _serve_apis(self, request: kmock.Request) -> rendering.Payload:
        groups: dict[str, set[str]] = {}
        for kind in self.known_kinds():
            if kind.group:
                groups.setdefault(kind.group, set()).add(kind.version)
        return {
            "apiVersion": "v1",
            "kind": "APIGroupList",
            "groups": [self._group_doc(g, v) for g, v in sorted(groups.items())],
        }

    async def _serve_group(self, request: kmock.Request) -> rendering.Payload:
        group = request.resource.group if request.resource is not None else None
        versions = {kind.version for kind in self.known_kinds() if kind.group == group and group}
        if not versions or group is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        return {"apiVersion": "v1", "kind": "APIGroup", **self._group_doc(group, versions)}

    @staticmethod
    def _group_doc(group: str, versions: set[str]) -> Body:
        ordered = sorted(versions, key=_version_priority, reverse=True)
        docs = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
        return {"name": group, "versions": docs, "preferredVersion": docs[0]}


def schemaless_crd(group: str, kind: str, scope: str = "Namespaced", version: str = "v1") -> Body:
    """A CRD that keeps whatever its objects hold (someone else's kind, e.g. Kopf's or the
    Prometheus Operator's), with the names a real API server would default."""
    plural = f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def kopf_peering_crds() -> list[Body]:
    """Kopf's KopfPeering and ClusterKopfPeering CRDs (kopf.dev/v1), for operators run with peering."""
    return [
        schemaless_crd("kopf.dev", "KopfPeering"),
        schemaless_crd("kopf.dev", "ClusterKopfPeering", scope="Cluster"),
    ]


# --------------------------------------------------------------------------------------------
# The test-facing server: a thread, a kubeconfig, helpers.
# --------------------------------------------------------------------------------------------


def _quantity(value: Any) -> float:
    match = re.match(r"^([0-9.]+)([A-Za-z]*)$", str(value))
    if match is None:
        return 0.0
    units = {
        "": 1,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "P": 1e15,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "m": 1e-3,
    }
    return float(match[1]) * units.get(match[2], 1)


def load_manifests(paths: Iterable[Path]) -> list[Body]:
    docs: list[Body] = []
    for path in paths:
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


class ApiServer:
    """The emulator on 127.0.0.1, on its own thread, with sync helpers for tests.

    Usage::

        with ApiServer(crds=[...], namespaces=["tts-test"]) as api:
            api.write_kubeconfig(path)
            api.create("ttsendpoints", "tts-test", body)
            api.wait_for(lambda: api.get("deployments", "tts-test", "x"))

    ``kind`` arguments accept a plural (``deployments``), a kind (``Deployment``),
    a short name (``deploy``), ``plural.group`` or ``group/version/plural``.
    """

    def __init__(
        self,
        *,
        crds: Iterable[Body] = (),
        namespaces: Iterable[str] = (),
        token: str | None = "emulator-token",
        validate: bool = True,
        host: str = "127.0.0.1",
        log_size: int = 50_000,
    ) -> None:
        self.token = token
        self.log_size = log_size
        self.host = host
        self._crds = list(crds)
        self._namespaces = list(namespaces)
        self._validate = validate
        self._emulator: KubeEmulator | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._stopped: asyncio.Event | None = None
        self._url: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> Self:
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        self._url = self._ready.result(timeout=timeout)
        try:
            for crd in self._crds:
                self.add_crd(crd)
            for namespace in self._namespaces:
                self.kmock.on_loop(functools.partial(self.kmock._ensure_namespace, namespace))
                self.kmock._notify()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        emulator, loop = self._emulator, self._emulator._loop if self._emulator else None
        if self._thread is None or emulator is None or loop is None or self._stopped is None:
            return
        loop.call_soon_threadsafe(emulator.close_watches)
        loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError("the API server thread did not stop")
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            raise

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        async with KubeEmulator(
            token=self.token, validate=self._validate, log_size=self.log_size
        ) as emulator:
            self._emulator = emulator
            server = aiohttp.web.Server(emulator, handler_cancellation=True)
            runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, self.host, 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self._ready.set_result(f"http://{host}:{port}")
            try:
                await self._stopped.wait()
            finally:
                emulator.close_watches()
                await runner.cleanup()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the API server is not running")
        return self._url

    def cpu_seconds(self) -> float:
        """CPU seconds of the server's thread: every request, and every write made by this class."""
        if self._thread is None or self._thread.ident is None:
            raise RuntimeError("the API server is not running")
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    @property
    def kmock(self) -> KubeEmulator:
        """The kmock handler: its DSL injects faults, e.g. ``api.kmock["patch"] << 500``."""
        if self._emulator is None:
            raise RuntimeError("the API server is not running")
        return self._emulator

    def kubeconfig(self, namespace: str = "default") -> Body:
        user: Body = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": user}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace)))
        return path

    # ---- kinds -----------------------------------------------------------------------------

    def resolve(self, kind: str) -> Kind:
        """The one resource a kind name means (see the class doc for the accepted forms)."""
        kinds = self.kmock.known_kinds()
        parts = kind.split("/")
        if len(parts) == 3:
            found = [k for k in kinds if k.key == tuple(parts)]
        elif len(parts) == 2:
            found = [k for k in kinds if k.key == ("", parts[0], parts[1])]
        else:
            name, _, group = kind.partition(".")
            found = [k for k in kinds if (not group or k.group == group) and kind_matches(k, name)]
        if len(found) > 1:
            core = [k for k in found if k.group == ""]
            stable = sorted(found, key=lambda k: _version_priority(k.version), reverse=True)
            found = core or [
                k for k in stable if k.group == stable[0].group and k.version == stable[0].version
            ]
        if len(found) != 1:
            raise LookupError(f"{kind!r} names {len(found)} resources: {[k.key for k in found]}")
        return found[0]

    def add_crd(self, crd: Body) -> Body:
        """Install a CustomResourceDefinition, as ``kubectl apply`` would: its kinds appear in discovery."""
        return self.create("customresourcedefinitions", None, crd)

    # ---- reading ---------------------------------------------------------------------------

    def objects(
        self, kind: str, namespace: str | None = None, *, labels: str = "", fields: str = ""
    ) -> list[Body]:
        """The stored objects of a kind (all namespaces unless one is given), as copies."""
        return self.kmock.select(self.resolve(kind), namespace, labels=labels, fields=fields)

    def get(self, kind: str, namespace: str | None, name: str) -> Body | None:
        """One stored object (a copy), or None."""
        return self.kmock.read(self.resolve(kind), namespace, name)

    def events(self, namespace: str | None = None, *, involved: str | None = None) -> list[Body]:
        """Core v1 and events.k8s.io/v1 events, optionally about one object (by name)."""
        found = self.objects("v1/events", namespace) + self.objects(
            "events.k8s.io/v1/events", namespace
        )
        if involved is not None:
            found = [
                e
                for e in found
                if (e.get("involvedObject") or e.get("regarding") or {}).get("name") == involved
            ]
        return found

    @property
    def requests(self) -> list[ApiRequest]:
        with self.kmock._mutex:
            return list(self.kmock.api_requests)

    def count(
        self, *, method: str | None = None, kind: str | None = None, action: str | None = None
    ) -> int:
        """How many requests matched (method like PATCH, kind as a plural, action like list/watch)."""
        plural = self.resolve(kind).plural if kind else None
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (plural is None or r.plural == plural)
            and (action is None or r.action == action)
        )

    @property
    def pruned(self) -> list[str]:
        """Fields of custom resources the server dropped because the CRD schema does not know them."""
        return list(self.kmock.pruned)

    # ---- writing (as a client, a kubelet or a controller would) ----------------------------

    def create(self, kind: str, namespace: str | None, body: Body) -> Body:
        resolved = self.resolve(kind)
        return self.kmock.on_loop(lambda: self.kmock.store_create(resolved, namespace, body))

    def patch(
        self,
        kind: str,
        namespace: str | None,
        name: str,
        patch: Body,
        *,
        subresource: str | None = None,
    ) -> Body:
        """A JSON merge patch (RFC 7386)."""
        resolved = self.resolve(kind)
        return self.kmock.on_loop(
            lambda: self.kmock.store_update(
                resolved,
                namespace,
                name,
                lambda old: merge_patch(old, patch),
                subresource=subresource,
            )
        )

    def patch_status(self, kind: str, namespace: str | None, name: str, status: Body) -> Body:
        """Merge-patch .status through the status subresource (or the object when it has none)."""
        resolved = self.resolve(kind)
        sub = "status" if resolved.status_subresource else None
        return self.kmock.on_loop(
            lambda: self.kmock.store_update(
                resolved,
                namespace,
                name,
                lambda old: merge_patch(old, {"status": status}),
                subresource=sub,
            )
        )

    def delete(
        self, kind: str, namespace: str | None, name: str, *, propagation: str | None = None
    ) -> Body:
        resolved = self.resolve(kind)
        return self.kmock.on_loop(
            lambda: self.kmock.store_delete(resolved, namespace, name, policy=propagation)
        )

    def mark_deployment_available(
        self, namespace: str, name: str, ready: int | None = None
    ) -> Body:
        """Play the Deployment controller and kubelet: all (or ``ready``) replicas ready."""
        deployment = self.get("deployments", namespace, name)
        if deployment is None:
            raise LookupError(f"deployment {namespace}/{name} does not exist")
        replicas = int(deployment["spec"].get("replicas", 1))
        ready = replicas if ready is None else ready
        now = now_rfc3339()
        available = "True" if ready >= replicas else "False"
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(replicas - ready, 0) or None,
            "conditions": [
                {
                    "type": "Available",
                    "status": available,
                    "reason": "MinimumReplicasAvailable"
                    if available == "True"
                    else "MinimumReplicasUnavailable",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                },
            ],
        }
        return self.patch_status("deployments", namespace, name, status)

    def complete_job(
        self, namespace: str, name: str, *, termination_message: str | None = None
    ) -> Body:
        """Play the Job controller and kubelet: the Job succeeded; optionally its pod reports a message."""
        job = self.get("jobs", namespace, name)
        if job is None:
            raise LookupError(f"job {namespace}/{name} does not exist")
        if termination_message is not None:
            self._job_pod(job, "Succeeded", 0, termination_message)
        now = now_rfc3339()
        status = {
            "startTime": job.get("status", {}).get("startTime", now),
            "completionTime": now,
            "succeeded": 1,
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                {
                    "type": "SuccessCriteriaMet",
                    "status": "True",
                    "reason": "CompletionsReached",
                    "message": "Reached expected number of succeeded pods",
                    "lastProbeTime": now,
                    "lastTransitionTime": now,
                },
                {
                    "type": "Complete",
                    "status": "True",
                    "reason": "CompletionsReached",
                    "message": "Reached expected number of succeeded pods",
                    "lastProbeTime": now,
                    "lastTransitionTime": now,
                },
            ],
        }
        return self.patch_status("jobs", namespace, name, status)

    def fail_job(
        self,
        namespace: str,
        name: str,
        *,
        message: str = "Job has reached the specified backoff limit",
        termination_message: str | None = None,
    ) -> Body:
        """Play the Job controller: the Job failed (BackoffLimitExceeded)."""
        job = self.get("jobs", namespace, name)
        if job is None:
            raise LookupError(f"job {namespace}/{name} does not exist")
        if termination_message is not None:
            self._job_pod(job, "Failed", 1, termination_message)
        now = now_rfc3339()
        status = {
            "startTime": job.get("status", {}).get("startTime", now),
            "failed": int(job["spec"].get("backoffLimit", 6)) + 1,
            "active": 0,
            "ready": 0,
            "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                {
                    "type": "FailureTarget",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": message,
                    "lastProbeTime": now,
                    "lastTransitionTime": now,
                },
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": message,
                    "lastProbeTime": now,
                    "lastTransitionTime": now,
                },
            ],
        }
        return self.patch_status("jobs", namespace, name, status)

    def _job_pod(self, job: Body, phase: str, exit_code: int, message: str) -> Body:
        meta = job["metadata"]
        template = job["spec"]["template"]
        pod = self.create(
            "pods",
            meta["namespace"],
            {
                "metadata": {
                    "generateName": f"{meta['name']}-",
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": copy.deepcopy(template["spec"]),
            },
        )
        now = now_rfc3339()
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "message": message,
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
            for c in template["spec"].get("containers", [])
        ]
        return self.patch_status(
            "pods",
            meta["namespace"],
            pod["metadata"]["name"],
            {"phase": phase, "containerStatuses": statuses, "startTime": now},
        )

    # ---- HTTP as a client, and waiting -----------------------------------------------------

    def http(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
    ) -> tuple[int, Any]:
        """One raw request with the kubeconfig's token: (status code, decoded JSON or text)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method.upper())
        request.add_header("Content-Type", content_type)
        bearer = token if token is not None else self.token
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_for(
        self, predicate: Callable[[], T | None], timeout: float = 10.0, message: str = ""
    ) -> T:
        """Return the predicate's first truthy value; AssertionError after ``timeout`` seconds.

        Re-checked on every change the server stores (no fixed sleeps), and at least every
        0.1 s for predicates that also look at state outside the server (handler calls).
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = self.kmock.version
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {message or predicate!r}; last value: {value!r}"
                )
            self.kmock.wait_changed(seen, min(remaining, 0.1))


def kind_matches(kind: Kind, name: str) -> bool:
    return name in (kind.plural, kind.kind, kind.kind.lower(), *kind.shortnames)
