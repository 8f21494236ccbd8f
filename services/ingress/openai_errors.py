"""OpenAI-shaped errors for the OpenAI-compatible routes: `{"error": {"message", "type", "param", "code"}}`.

The official `openai` client reads the HTTP status to pick the exception
class (400 `BadRequestError`, 404 `NotFoundError`, 429 `RateLimitError` ...)
and `error.code` and `error.param` from the body. `OpenAIRoute` translates
Sluice's own errors raised on these routes, FastAPI's validation errors and
Redis failures into that shape here, so the app-wide handlers in `errors.py`,
which write Sluice's own error body, never see them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from services.ingress.errors import ApiError, field_path

log = structlog.get_logger(__name__)

# OpenAI's error types by HTTP status. Any other status below 500 is an invalid request.
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}
_SERVER_ERROR_TYPE = "server_error"
_INVALID_REQUEST_TYPE = "invalid_request_error"

# pydantic error types that OpenAI reports under a code of its own.
_VALIDATION_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


def error_type(status_code: int) -> str:
    if status_code >= 500:
        return _SERVER_ERROR_TYPE
    return _ERROR_TYPES.get(status_code, _INVALID_REQUEST_TYPE)


class OpenAIError(Exception):
    """An error that an OpenAI-compatible route sends as `{"error": {...}}` with `status_code`.

    `param` names the request parameter at fault, as OpenAI does, for example
    `max_tokens` or `messages.0.content`.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": error_type(self.status_code), "param": self.param, "code": self.code}
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def from_api_error(error: ApiError) -> OpenAIError:
    """Translate a Sluice `ApiError` (401, 413, 429, 503 ...) keeping its status, code, field and headers."""
    return OpenAIError(error.status_code, error.code, error.message, param=error.field, headers=error.headers)


def from_validation_error(error: RequestValidationError) -> OpenAIError:
    """Translate FastAPI's body validation error into a 400 naming the first invalid parameter, as OpenAI does."""
    details = list(error.errors())
    first = details[0] if details else {}
    param = field_path(first.get("loc", ()))
    summary = "; ".join(f"{field_path(detail.get('loc', ()))}: {detail.get('msg', 'invalid value')}" for detail in details)
    code = _VALIDATION_CODES.get(str(first.get("type")), "invalid_value")
    return OpenAIError(400, code, f"invalid request: {summary}", param=param)


def state_store_unavailable() -> OpenAIError:
    return OpenAIError(503, "state_store_unavailable", "the request state store (Redis) is unavailable; retry later")


class OpenAIRoute(APIRoute):
    """A route whose errors, including those of its dependencies and body validation, are OpenAI-shaped.

    FastAPI runs dependency resolution and body validation inside the handler
    that `get_route_handler` returns, so wrapping it catches the 401 of the
    API key dependency and the 422 of validation too.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_with_openai_errors(request: Request) -> Response:
            try:
                return await handle(request)
            except OpenAIError as error:
                return _rejected(request, error)
            except ApiError as error:
                return _rejected(request, from_api_error(error))
            except RequestValidationError as error:
                return _rejected(request, from_validation_error(error))
            except RedisError as error:
                log.warning("redis_request_failed", path=request.url.path, error=repr(error))
                return state_store_unavailable().response()

        return handle_with_openai_errors


def _rejected(request: Request, error: OpenAIError) -> Response:
    log.info("http_request_rejected", path=request.url.path, status_code=error.status_code, code=error.code)
    return error.response()
