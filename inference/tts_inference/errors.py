"""Errors a route turns into the one JSON error shape, with the status they carry."""

from __future__ import annotations


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
