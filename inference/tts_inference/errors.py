"""Errors a route turns into the one JSON error shape, with the status they carry."""

from __future__ import annotations


class ApiError(Exception):
    """A failure the HTTP layer answers with ``status`` and this message."""

    def __init__(self, message: str, param: str | None = None, status: int = 500) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class BadRequest(ApiError):
    """Input the caller can fix; the message says what and where (a 4xx)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message, param, status)


class Unavailable(ApiError):
    """A dependency (the bucket) failed; retrying later may work (a 503 by default)."""

    def __init__(self, message: str, param: str | None = None, status: int = 503) -> None:
        super().__init__(message, param, status)
