"""Write docs/crd-reference.md from the CRD schemas under crds/.

Run `make docs` after changing a CRD; a test fails while the committed page
differs from what this prints, so the reference always covers every field.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "crd-reference.md"


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    if node.get("type") == "array":
        return f"[]{_type(node.get('items', {}))}"
    if node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    return str(node.get("type", "any"))


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" if v != "" else '`""`' for v in node["enum"]))
    if "items" in node and "enum" in node["items"]:
        parts.append("items one of " + ", ".join(f"`{v}`" for v in node["items"]["enum"]))
    if "minimum" in node or "maximum" in node:
        parts.append(f"{node.get('minimum', '')}..{node.get('maximum', '')}")
    if "minLength" in node or "maxLength" in node:
        parts.append(f"length {node.get('minLength', 0)}..{node.get('maxLength', '')}")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    if "default" in node:
        parts.append(f"default `{json.dumps(node['default'])}`")
    for rule in node.get("x-kubernetes-validations", []):
        parts.append(f"rule: {rule['message']}")
    return "; ".join(parts).replace("|", "\\|")


def fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(path, schema, required) for every field below ``node``, depth first."""
    required = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        sub_path = f"{path}.{name}" if path else name
        yield sub_path, sub, name in required
        if sub.get("x-kubernetes-preserve-unknown-fields"):
            continue
        yield from fields(sub, sub_path)
        if sub.get("type") == "array":
            yield from fields(sub.get("items", {}), sub_path + "[]")


def render() -> str:
    lines = [
        "# CRD reference",
        "",
        "Generated from `crds/` by `scripts/gen_crd_reference.py` (`make docs`); do not edit by hand.",
        "Group `tts.f5tts.dev`, version `v1alpha1`. Rules marked *rule* are CEL validations the",
        "API server enforces at apply time.",
        "",
    ]
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        lines += [
            f"## {names['kind']}",
            "",
            " ".join(schema.get("description", "").split()),
            "",
            f"Short names: {', '.join(f'`{n}`' for n in names.get('shortNames', []))}; "
            f"categories: {', '.join(f'`{c}`' for c in names.get('categories', []))}.",
            "",
        ]
        top_rules = schema["properties"]["spec"].get("x-kubernetes-validations", [])
        if top_rules:
            lines += ["Rules on the whole spec:", ""]
            lines += [f"- {rule['message']}" for rule in top_rules]
            lines.append("")
        lines += [
            "| Field | Type | Required | Description | Constraints |",
            "|---|---|---|---|---|",
        ]
        for field_path, node, required in fields(schema, ""):
            if field_path in {"apiVersion", "kind", "metadata"}:
                continue
            desc = " ".join(node.get("description", "").split()).replace("|", "\\|")
            constraints = _constraints(node) if field_path != "spec" else ""
            lines.append(
                f"| `{field_path}` | {_type(node)} | {'yes' if required else ''} | {desc} | {constraints} |"
            )
        lines += ["", "Printer columns (`kubectl get`):", ""]
        for col in version.get("additionalPrinterColumns", []):
            wide = " (with `-o wide`)" if col.get("priority", 0) > 0 else ""
            lines.append(f"- **{col['name']}**{wide}: `{col['jsonPath']}`")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
