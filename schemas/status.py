"""The one error shape of the API (`Status`) and the exception that carries it."""
from __future__ import annotations

import msgspec

from .base import Model


class StatusCause(Model):
    field: str | None = None
    reason: str | None = None
    message: str | None = None


class StatusDetails(Model):
    name: str | None = None
    kind: str | None = None
    causes: list[StatusCause] = msgspec.field(default_factory=list)
    retry_after_seconds: int | None = None


class Status(Model, tag_field="kind", tag="Status"):
    # code and reason have no defaults so that they are always on the wire: with a default,
    # omit_defaults dropped them from exactly the 500 InternalError replies.
    code: int
    reason: str
    api_version: str = "v1"
    status: str = "Failure"
    message: str = ""
    details: StatusDetails | None = None


CODES = {
    "BadRequest": 400,
    "Forbidden": 403,
    "NotFound": 404,
    "AlreadyExists": 409,
    "Conflict": 409,
    "Gone": 410,
    "TooLarge": 413,
    "Invalid": 422,
    "InternalError": 500,
    "TooManyRequests": 429,
    "Timeout": 504,
    "ServiceUnavailable": 503,
}


class ApiError(Exception):
    """Raised by the server to reply with a Status, and by the client when a Status comes back."""

    def __init__(self, reason: str, message: str, *, field: str | None = None, code: int | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.code = code if code is not None else CODES.get(reason, 500)
        self.message = message
        self.field = field
        self.retry_after = retry_after  # seconds (429 TooManyRequests): when trying again can succeed

    def to_status(self) -> Status:
        details = None
        if self.field:
            details = StatusDetails(causes=[StatusCause(field=self.field, reason=self.reason, message=self.message)])
        if self.retry_after is not None:
            details = details or StatusDetails()
            details.retry_after_seconds = self.retry_after
        return Status(code=self.code, reason=self.reason, message=self.message, details=details)

    @classmethod
    def from_status(cls, status: Status) -> "ApiError":
        field = status.details.causes[0].field if status.details and status.details.causes else None
        retry_after = status.details.retry_after_seconds if status.details else None
        return cls(status.reason, status.message, field=field, code=status.code, retry_after=retry_after)

    def __repr__(self) -> str:
        return f"ApiError({self.code} {self.reason}: {self.message})"


def not_found(resource: str, name: str) -> ApiError:
    return ApiError("NotFound", f'{resource} "{name}" not found')


def invalid(field: str, message: str) -> ApiError:
    return ApiError("Invalid", f"{field}: {message}", field=field)
