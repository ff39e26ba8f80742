"""Errors a route turns into the one JSON error shape, with the status they carry, and the
handlers that answer them: every failure, foreseen or not, leaves in OpenAI's error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tts_inference.protocol import error_payload

log = logging.getLogger("tts_inference.errors")


class ApiError(Exception):
    """A failure the HTTP layer answers with ``status`` and this message.

    ``retry_after`` (seconds) goes out as a Retry-After header; 429 and 503 get 5 by default.
    """

    def __init__(
        self,
        message: str,
        param: str | None = None,
        status: int = 500,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        self.status = status
        if retry_after is None and status in (429, 503):
            retry_after = 5
        self.retry_after = retry_after


class BadRequest(ApiError):
    """Input the caller can fix; the message says what and where (a 4xx)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message, param, status)


class Unavailable(ApiError):
    """A dependency (the bucket) failed; retrying later may work (a 503 by default)."""

    def __init__(self, message: str, param: str | None = None, status: int = 503) -> None:
        super().__init__(message, param, status)


class QueueFull(ApiError):
    """The queue holds max_queue requests already; retry shortly (a 429)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=429, retry_after=1)


class DeadlineExceeded(ApiError, TimeoutError):
    """The request waited longer than its deadline and was not run (a 504)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; the server is overloaded, retry later", status=504)


def error_type(status: int) -> str:
    """OpenAI's error type for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_status(exc: Exception) -> tuple[int, str]:
    """The status and message a failure is answered with; anything unforeseen is a 500."""
    if isinstance(exc, ApiError):
        return exc.status, str(exc)
    return 500, f"synthesis failed: {type(exc).__name__}: {exc}"


def error_response(
    status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_payload(message, type_=error_type(status), param=param),
        status_code=status,
        headers=headers,
    )


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return error_response(
            400,
            f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}",
        )
    message = first.get("msg", "invalid request")
    return error_response(400, f"{param}: {message}" if param else message, param=param)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    return error_response(exc.status, str(exc), param=exc.param, headers=headers)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("request failed: %s: %s", type(exc).__name__, exc)
    return error_response(*error_status(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Answer invalid requests, ApiErrors, HTTP errors and anything unforeseen in one shape."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_error)
