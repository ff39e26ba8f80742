"""Validate custom resources the way the API server does, without a cluster.

The API server checks a custom resource in three steps, and so does this module:
structural schema (types, enums, bounds, patterns, required fields), unknown
fields (rejected under strict field validation, kubectl's default), and the
CEL rules in ``x-kubernetes-validations``, which are evaluated here by a real
CEL evaluator (cel-python) with ``self`` and, on update, ``oldSelf`` bound to
the value at the rule's place in the object. Defaults are applied first, as
the API server does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"


def load_crds() -> dict[str, dict[str, Any]]:
    """CRDs under crds/, keyed by kind."""
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


def openapi_schema(crd: dict[str, Any], version: str = "v1alpha1") -> dict[str, Any]:
    for ver in crd["spec"]["versions"]:
        if ver["name"] == version:
            schema: dict[str, Any] = ver["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"{crd['metadata']['name']} has no version {version}")


def _to_jsonschema(node: dict[str, Any], *, at_root: bool = False) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as a JSON Schema that rejects unknown fields."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in {"description", "default", "format"}:
            continue
        if key == "properties":
            out[key] = {name: _to_jsonschema(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _to_jsonschema(value)
        elif key == "anyOf":
            out[key] = [_to_jsonschema(sub) for sub in value]
        else:
            out[key] = value
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if node.get("type") == "object" and "properties" in node and not preserve and not at_root:
        out.setdefault("additionalProperties", False)
    if at_root:
        # apiVersion, kind and metadata are checked by the API server itself.
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in schema defaults the way the API server does before validating."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                if name not in props:
                    value[name] = apply_defaults(extra, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _structural_errors(schema: dict[str, Any], obj: dict[str, Any]) -> Iterator[str]:
    validator = jsonschema.Draft202012Validator(_to_jsonschema(schema, at_root=True))
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(err.absolute_path)
        if err.validator == "additionalProperties":
            known = set(err.schema.get("properties", {}))
            for name in sorted(set(err.instance) - known):
                yield f'unknown field "{_path([*err.absolute_path, name])}"'
        elif err.validator == "required":
            missing = err.message.split("'")[1]
            yield f"{_path([*err.absolute_path, missing])}: Required value"
        elif err.validator == "type":
            yield f"{where}: Invalid value: must be of type {err.validator_value}"
        else:
            yield f"{where}: Invalid value: {err.message}"


_CEL_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _CEL_ENV.program(_CEL_ENV.compile(rule))
    return _PROGRAMS[rule]


def cel_rules(
    schema: dict[str, Any], path: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Every x-kubernetes-validations rule with the schema path it is scoped to."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, sub in schema.get("properties", {}).items():
        yield from cel_rules(sub, (*path, name))
    if "items" in schema:
        yield from cel_rules(schema["items"], (*path, "*"))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from cel_rules(extra, (*path, "*"))


def _values_at(
    value: Any, path: tuple[Any, ...], at: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if not path:
        yield at, value
        return
    head, rest = path[0], path[1:]
    if head == "*":
        items = (
            enumerate(value)
            if isinstance(value, list)
            else (value.items() if isinstance(value, dict) else ())
        )
        for key, sub in items:
            yield from _values_at(sub, rest, (*at, key))
    elif isinstance(value, dict) and head in value:
        yield from _values_at(value[head], rest, (*at, head))


def _lookup(value: Any, concrete: tuple[Any, ...]) -> tuple[bool, Any]:
    for part in concrete:
        if (isinstance(value, dict) and part in value) or (
            isinstance(value, list) and isinstance(part, int) and part < len(value)
        ):
            value = value[part]
        else:
            return False, None
    return True, value


def _cel_errors(
    schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None
) -> Iterator[str]:
    for path, rule in cel_rules(schema):
        expr = rule["rule"]
        transition = "oldSelf" in expr
        if transition and old is None:
            continue
        for concrete, value in _values_at(obj, path):
            activation = {"self": json_to_cel(value)}
            if transition:
                found, old_value = _lookup(old, concrete)
                if not found:
                    continue
                activation["oldSelf"] = json_to_cel(old_value)
            result = _program(expr).evaluate(activation)
            if isinstance(result, CELEvalError):
                yield f"{_path(concrete)}: Invalid value: rule {expr!r} could not be evaluated: {result}"
            elif not bool(result):
                yield f"{_path(concrete)}: Invalid value: {rule.get('message', 'failed rule: ' + expr)}"


@dataclass
class Result:
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        return "; ".join(self.errors) or "valid"


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> Result:
    """Validate a custom resource (a create, or an update when ``old`` is given)."""
    crds = load_crds()
    kind = obj.get("kind")
    if kind not in crds:
        return Result([f"kind: unknown kind {kind!r}"])
    crd = crds[kind]
    expected = f"{crd['spec']['group']}/v1alpha1"
    if obj.get("apiVersion") != expected:
        return Result([f"apiVersion: must be {expected}"])
    schema = openapi_schema(crd)
    obj = apply_defaults(schema, copy.deepcopy(obj))
    if old is not None:
        old = apply_defaults(schema, copy.deepcopy(old))
    errors = list(_structural_errors(schema, obj))
    if not errors:
        # The API server runs CEL rules only on objects that passed the structural checks.
        errors = list(_cel_errors(schema, obj, old))
    return Result(errors)
