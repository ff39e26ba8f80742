"""The CRDs on the real API server: installed (structural schema, CEL cost budget),
examples accepted, the bad-spec table rejected naming the field, and the offline
validator (tests/support/crdschema.py) agreeing with the server on every row."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.crds.test_crds import (
    BAD_SPECS,
    DELETE,
    EXAMPLES,
    IMMUTABLE_UPDATES,
    _del,
    _set,
    example,
)
from tests.support import crdschema
from tests.support.cluster import ApiError, Kube, path


def dry_run_create(kube: Kube, ns: str, doc: dict[str, Any]) -> ApiError | None:
    """The server's verdict on creating ``doc`` as ``kubectl apply`` sends it (strict field
    validation, so an unknown field is an error, not silently pruned); nothing is stored."""
    try:
        query = {"dryRun": "All", "fieldValidation": "Strict"}
        kube.request("POST", path(doc["kind"], ns), doc, query=query)
    except ApiError as e:
        return e
    return None


def test_the_crds_are_established_and_served(kube: Kube) -> None:
    for name in ("ttsendpoints.tts.f5tts.dev", "ttsjobs.tts.f5tts.dev"):
        crd = kube.get("customresourcedefinitions", None, name)
        assert crd is not None
        conds = {cd["type"]: cd["status"] for cd in crd["status"]["conditions"]}
        assert conds["Established"] == "True"
        assert conds["NamesAccepted"] == "True"
        assert "NonStructuralSchema" not in conds


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_every_example_is_accepted_by_the_api_server(
    kube: Kube, ns: str, name: str, doc: dict[str, Any]
) -> None:
    error = dry_run_create(kube, ns, copy.deepcopy(doc))
    assert error is None, f"{name}: {error}"


def test_the_offline_validator_and_the_api_server_agree_on_every_bad_spec(
    kube: Kube, ns: str
) -> None:
    disagreements = []
    for case, kind, name, changes, needle in BAD_SPECS:
        doc = example(kind, name)
        for field, value in changes:
            _del(doc, field) if value is DELETE else _set(doc, field, value)
        offline = crdschema.validate(doc)
        server = dry_run_create(kube, ns, doc)
        if server is None:
            disagreements.append(f"{case}: the API server accepted it")
            continue
        # 422 Invalid for the schema and CEL rules; 400 for a field the schema does not know.
        assert server.status in (400, 422), f"{case}: {server}"
        if needle not in server.message:
            disagreements.append(
                f"{case}: the API server's message does not name {needle!r}: {server.message}"
            )
        if offline.ok:
            disagreements.append(f"{case}: the offline validator accepted what the server refused")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize(
    ("kind", "name", "field", "value", "needle"),
    [case for case in IMMUTABLE_UPDATES if case[4] is not None],
)
def test_immutable_fields_are_refused_by_the_api_server(
    kube: Kube, ns: str, kind: str, name: str, field: str, value: Any, needle: str
) -> None:
    created = kube.create(kind, ns, example(kind, name))
    changed = copy.deepcopy(created)
    _set(changed, field, value)
    with pytest.raises(ApiError) as refused:
        kube.request("PUT", path(kind, ns, name), changed)
    assert refused.value.status == 422
    assert needle in refused.value.message
    assert not crdschema.validate(changed, old=created).ok, "the offline validator accepted it"
