"""Shared metadata for every child: names, labels, the controller owner reference, a spec hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tts_operator import constants as c

Obj = dict[str, Any]

MAX_NAME = 63


def child_name(parent: str, suffix: str) -> str:
    """``<parent>-<suffix>`` within 63 characters; long names keep a hash so they stay unique."""
    name = f"{parent}-{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{parent[: MAX_NAME - len(suffix) - 10]}-{digest}-{suffix}"


def selector_labels(instance: str, component: str, kind: str) -> dict[str, str]:
    """The labels a selector matches on: stable for the life of the parent."""
    return {
        c.LABEL_NAME: "tts-operator",
        c.LABEL_INSTANCE: instance,
        c.LABEL_COMPONENT: component,
        c.LABEL_KIND: kind.lower(),
    }


def labels(instance: str, component: str, kind: str) -> dict[str, str]:
    return {
        **selector_labels(instance, component, kind),
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_PART_OF: "tts-operator",
    }


def owner_reference(parent: Obj) -> Obj:
    """The parent as the controlling owner: deleting it deletes the child."""
    meta = parent["metadata"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    parent: Obj, name: str, component: str, annotations: dict[str, str] | None = None
) -> Obj:
    """Child metadata: namespace, app.kubernetes.io labels, owner; nothing else of the parent's."""
    meta: Obj = {
        "name": name,
        "namespace": parent["metadata"]["namespace"],
        "labels": labels(parent["metadata"]["name"], component, parent["kind"]),
        "ownerReferences": [owner_reference(parent)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def spec_hash(*inputs: Any) -> str:
    """A short, stable hash of the named inputs (never status or fields others edit)."""
    data = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("20Gi", "500M", "1.5T", 42) as a number (bytes for storage)."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)
