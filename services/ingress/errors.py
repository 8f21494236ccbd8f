"""The ingress error vocabulary and the handlers that render every error as `{"error": {...}}`.

Each `ApiError` subclass fixes an HTTP status. FastAPI's validation errors,
Starlette's routing errors (unknown path, wrong method) and Redis failures are
translated here, so every response body that is not a success has the form
`{"error": {"code", "message", "field"?, "details"?}}`.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """An error the client gets as JSON with `status_code` (500 unless a subclass sets another).

    `field` names the offending input when there is one.
    """

    status_code = 500

    def __init__(self, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


class InvalidRequestError(ApiError):
    """A header or query value is invalid; the body's own validation errors come from FastAPI."""

    status_code = 422


class AuthenticationError(ApiError):
    """The Authorization header is missing, malformed or contains an unknown API key."""

    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__("unauthorized", message, field="Authorization", headers={"WWW-Authenticate": "Bearer"})


class RequestNotFoundError(ApiError):
    """No request with this id exists for the caller's tenant."""

    status_code = 404

    def __init__(self, request_id: str) -> None:
        super().__init__(
            "request_not_found",
            f"request {request_id!r} not found: it does not exist, belongs to another tenant "
            "or its status record has expired",
        )


class PromptTooLargeError(ApiError):
    status_code = 413


class IdempotencyKeyReusedError(ApiError):
    """The Idempotency-Key was used before with a different body."""

    status_code = 422


class IdempotencyKeyInUseError(ApiError):
    """A request with the same Idempotency-Key is still being accepted."""

    status_code = 409


class RequestAlreadyEndedError(ApiError):
    """The request reached a terminal status, so it can no longer be cancelled."""

    status_code = 409

    def __init__(self, request_id: str, status: str) -> None:
        super().__init__(
            "request_already_ended",
            f"request {request_id} already ended with status {status!r}; only a request that is still "
            "screening, queued or generating can be cancelled",
        )


class QuotaExceededError(ApiError):
    """The API key's requests or tokens per minute are used up; nothing was stored or published.

    `retry_after_s` becomes the `Retry-After` header. It is None when the
    request alone exceeds the key's per-minute limit, so waiting cannot help.
    """

    status_code = 429

    def __init__(self, code: str, message: str, *, retry_after_s: int | None) -> None:
        headers = None if retry_after_s is None else {"Retry-After": str(retry_after_s)}
        super().__init__(code, message, headers=headers)
        self.retry_after_s = retry_after_s


class ServiceUnavailableError(ApiError):
    """A dependency (NATS, Redis or the telemetry store) did not respond, so retrying later may succeed."""

    status_code = 503


def error_body(code: str, message: str, *, field: str | None = None, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    if details is not None:
        error["details"] = details
    return {"error": error}


def field_path(location: tuple[Any, ...] | list[Any]) -> str:
    """Return a dotted path such as `params.temperature` or `messages.0.role` for a pydantic error location.

    The leading `body`, `query`, `path` or `header` part is dropped. An error on
    the whole body (a missing body, or a rule over several fields) is `body`.
    """
    if not location:
        return "body"
    parts = [str(part) for part in location[1:]]
    return ".".join(parts) or str(location[0])


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"field": field_path(error.get("loc", ())), "message": error.get("msg", "invalid value")} for error in errors]


async def _handle_api_error(request: Request, error: ApiError) -> JSONResponse:
    log.info("http_request_rejected", path=request.url.path, status_code=error.status_code, code=error.code)
    body = error_body(error.code, error.message, field=error.field)
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def _handle_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    details = validation_details(list(error.errors()))
    fields = [detail["field"] for detail in details]
    log.info("http_request_rejected", path=request.url.path, status_code=422, code="invalid_request", fields=fields)
    summary = "; ".join(f"{detail['field']}: {detail['message']}" for detail in details)
    body = error_body("invalid_request", f"invalid request: {summary}", field=details[0]["field"], details=details)
    return JSONResponse(body, status_code=422)


async def _handle_http_error(request: Request, error: HTTPException) -> JSONResponse:
    if error.status_code == 404:
        code, message = "not_found", f"no route for {request.url.path}; the API is described at /docs"
    elif error.status_code == 405:
        code, message = "method_not_allowed", f"{request.method} is not allowed on {request.url.path}"
    else:
        code, message = f"http_{error.status_code}", str(error.detail)
    return JSONResponse(error_body(code, message), status_code=error.status_code, headers=error.headers)


async def _handle_redis_error(request: Request, error: RedisError) -> JSONResponse:
    log.warning("redis_request_failed", path=request.url.path, error=repr(error))
    message = "the request state store (Redis) is unavailable; retry later"
    return JSONResponse(error_body("state_store_unavailable", message), status_code=503)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that render `ApiError`, validation, routing and Redis errors as JSON."""
    app.add_exception_handler(ApiError, _handle_api_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(HTTPException, _handle_http_error)
    app.add_exception_handler(RedisError, _handle_redis_error)
