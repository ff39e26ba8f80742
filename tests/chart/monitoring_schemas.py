"""Small hand-written schemas for the Prometheus Operator kinds the chart renders.

kubernetes-validate only knows the built-in kinds, so ServiceMonitor,
PodMonitor and PrometheusRule (monitoring.coreos.com/v1) are checked here
instead: the fields the chart uses, with their types from the Prometheus
Operator's CRDs, and no others (closed objects), so a typo fails.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _closed(properties: Schema, required: list[str] | None = None) -> Schema:
    out: Schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        out["required"] = required
    return out


_STR = {"type": "string", "minLength": 1}
_DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_LABELS = {
    "type": "object",
    "additionalProperties": {"type": "string"},
    "propertyNames": {"pattern": "^([a-z0-9.-]+/)?[A-Za-z0-9_.-]{1,63}$"},
}
_METADATA = _closed(
    {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS},
    ["name", "namespace"],
)
_SELECTOR = _closed({"matchLabels": _LABELS})
_NAMESPACE_SELECTOR = {
    "oneOf": [
        _closed({"any": {"type": "boolean"}}, ["any"]),
        _closed({"matchNames": {"type": "array", "items": _STR, "minItems": 1}}, ["matchNames"]),
    ]
}
_ENDPOINT = _closed(
    {
        "port": _STR,
        "path": {"type": "string", "pattern": "^/"},
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
    },
    ["port"],
)


def _object(kind: str, spec: Schema) -> Schema:
    return _closed(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


_RULE = {
    "oneOf": [
        _closed(
            {
                "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "expr": _STR,
                "for": _DURATION,
                "labels": _LABELS,
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            ["alert", "expr"],
        ),
        _closed(
            {
                "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                "expr": _STR,
                "labels": _LABELS,
            },
            ["record", "expr"],
        ),
    ]
}

SCHEMAS: dict[str, Schema] = {
    "ServiceMonitor": _object(
        "ServiceMonitor",
        _closed(
            {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "endpoints": {"type": "array", "items": _ENDPOINT, "minItems": 1},
            },
            ["selector", "endpoints"],
        ),
    ),
    "PodMonitor": _object(
        "PodMonitor",
        _closed(
            {
                "selector": _SELECTOR,
                "namespaceSelector": _NAMESPACE_SELECTOR,
                "podMetricsEndpoints": {"type": "array", "items": _ENDPOINT, "minItems": 1},
            },
            ["selector", "podMetricsEndpoints"],
        ),
    ),
    "PrometheusRule": _object(
        "PrometheusRule",
        _closed(
            {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": _closed(
                        {
                            "name": _STR,
                            "interval": _DURATION,
                            "rules": {"type": "array", "items": _RULE, "minItems": 1},
                        },
                        ["name", "rules"],
                    ),
                }
            },
            ["groups"],
        ),
    ),
}
