"""Failures of cache operations, independent of which API reports them.

Each carries an HTTP status and a twirp error code; the v1, v2 and blob layers render
them in their own formats (v1 JSON ``message``, twirp ``{code, msg}``, Azure XML).
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    twirp = "internal"
    azure = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    status = 401
    twirp = "unauthenticated"
    azure = "AuthenticationFailed"


class Forbidden(ServiceError):
    status = 403
    twirp = "permission_denied"
    azure = "AuthorizationFailure"


class NotFound(ServiceError):
    status = 404
    twirp = "not_found"
    azure = "BlobNotFound"


class Conflict(ServiceError):
    status = 409
    twirp = "already_exists"
    azure = "BlobAlreadyExists"


class Invalid(ServiceError):
    status = 400
    twirp = "invalid_argument"
    azure = "InvalidInput"


class TooLarge(ServiceError):
    status = 413
    twirp = "invalid_argument"
    azure = "RequestBodyTooLarge"


class RangeNotSatisfiable(ServiceError):
    status = 416
    twirp = "out_of_range"
    azure = "InvalidRange"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class Unavailable(ServiceError):
    status = 503
    twirp = "unavailable"
    azure = "ServerBusy"
