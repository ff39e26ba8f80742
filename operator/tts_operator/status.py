"""Conditions, the Kubernetes way: pure functions, the clock passed in.

lastTransitionTime changes only when a condition's status changes;
observedGeneration is always set; reasons are CamelCase constants.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

Condition = dict[str, Any]


RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def now_rfc3339(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime(RFC3339)


def parse_rfc3339(text: str, like: datetime) -> datetime:
    """A timestamp as the API server writes it, in ``like``'s time zone (for comparing)."""
    return datetime.strptime(text, RFC3339).replace(tzinfo=like.tzinfo)


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A new list with ``type_`` set; other conditions are kept as they are."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = [copy.deepcopy(c) for c in conditions or [] if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    transition = (
        previous["lastTransitionTime"]
        if previous is not None
        and previous.get("status") == value
        and previous.get("lastTransitionTime")
        else now_rfc3339(now)
    )
    condition: Condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    out.append(condition)
    return sorted(out, key=lambda c: str(c["type"]))


def get_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: Sequence[Condition] | None, type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"
