"""How a failed pass is retried: Kopf's TemporaryError with a delay that fits the cause,
PermanentError where trying again cannot help until the resource changes."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from tts_operator import main
from tts_operator.kube import BUSY_RETRY_S, CONFLICT_RETRY_S, FORBIDDEN_RETRY_S, retry_delay


def _api_error(status: int, headers: dict[str, str] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="test")
    exc.headers = headers
    return exc


@pytest.mark.parametrize(
    ("exc", "delay"),
    [
        (_api_error(409), CONFLICT_RETRY_S),
        (_api_error(429, {"Retry-After": "7"}), 7.0),
        (_api_error(429), BUSY_RETRY_S),
        (_api_error(500), BUSY_RETRY_S),
        (_api_error(503), BUSY_RETRY_S),
        (_api_error(403), FORBIDDEN_RETRY_S),
        (_api_error(422), None),
        (_api_error(400), None),
        (ConnectionRefusedError(), BUSY_RETRY_S),
        (urllib3.exceptions.ProtocolError("reset"), BUSY_RETRY_S),
        (KeyError("spec"), None),
    ],
)
def test_each_cause_gets_its_delay(exc: BaseException, delay: float | None) -> None:
    assert retry_delay(exc) == delay


def _pass_raising(exc: BaseException) -> Any:
    async def run() -> None:
        raise exc

    return asyncio.run(main._reconcile("TTSJob", kopf.Body({}), kopf.Patch(), run, str))


def test_a_lost_race_is_retried_at_once_by_kopf() -> None:
    with pytest.raises(kopf.TemporaryError) as caught:
        _pass_raising(_api_error(409))
    assert caught.value.delay == CONFLICT_RETRY_S
    assert str(caught.value) == "ApiException: (409)"


def test_an_object_the_api_server_rejects_is_permanent() -> None:
    with pytest.raises(kopf.PermanentError):
        _pass_raising(_api_error(422))


def test_a_fault_of_the_operators_own_is_raised_whole() -> None:
    with pytest.raises(KeyError):
        _pass_raising(KeyError("spec"))
