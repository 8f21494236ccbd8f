"""The OpenAI-compatible API: `POST /v1/chat/completions`, `POST /v1/completions` and `GET /v1/models`.

Each completion request goes through the whole pipeline as a request of
`POST /v1/requests` does (screening, assignment, inference, moderation and
telemetry), and the route reads the moderated output from the release log.
`/v1/completions` sends its prompt as one user message, so the chat template
of the serving model applies to it as well. The `model` field names an
experiment, a variant or `auto` (see `shared.experiments.find_model`).

Errors have OpenAI's shape (`openai_errors.py`). A streaming response waits
for the first release log entry before it sends its headers, so a blocked
prompt or a failure before any output still gets an HTTP error status. A
client that disconnects before the response is complete cancels its request.
"""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import nats.errors
import structlog
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from shared.cancellation import REASON_CLIENT_DISCONNECTED
from shared.experiments import ExperimentsFile, find_model, model_names
from shared.release_log import ReleasedMessage, ReleaseLog

from services.ingress.acceptance import RequestAcceptor, trace_context
from services.ingress.cancellation import RequestCanceller
from services.ingress.openai_errors import OpenAIError, OpenAIRoute
from services.ingress.openai_models import ChatCompletionBody, CompletionBody, check_supported, request_spec
from services.ingress.openai_responses import ChatFormat, Finish, ResponseFormat, TextFormat, final_outcome
from services.ingress.openai_stream import (
    ClientDisconnected,
    DisconnectWatch,
    EventStreamResponse,
    completion_events,
    release_entries,
)

log = structlog.get_logger(__name__)

# The status of a response that no client reads because it disconnected, so
# only the server's access log shows it: 499 "Client Closed Request", the
# status that googleapis' google/rpc/code.proto gives to CANCELLED.
CLIENT_CLOSED_STATUS = 499
# `GET /v1/models` needs a creation time per model; experiments and variants have none.
UNKNOWN_CREATED_S = 0
MODEL_OWNER = "sluice"


class CompletionServer:
    """Accepts one OpenAI completion request into the pipeline and builds its response from the release log.

    `idle_timeout_s` bounds the wait for each next release log entry, the
    first one included.
    """

    def __init__(
        self, acceptor: RequestAcceptor, release_log: ReleaseLog, canceller: RequestCanceller, idle_timeout_s: float
    ) -> None:
        self._acceptor = acceptor
        self._release_log = release_log
        self._canceller = canceller
        self._idle_timeout_s = idle_timeout_s

    async def serve(
        self, request: Request, tenant: str, body: ChatCompletionBody | CompletionBody, format_type: type[ResponseFormat]
    ) -> Response:
        """Accept the request and return its response, streamed or whole; raises `OpenAIError` and `ApiError`."""
        spec = request_spec(body)
        trace = trace_context(request.headers.get("traceparent"), request.headers.get("tracestate"))
        acceptance = await self._acceptor.accept(tenant, spec, trace=trace, route=request.url.path)
        request_id = acceptance.request_id
        log.info("request_accepted", request_id=request_id, tenant=tenant, api="openai", stream=body.stream, model=body.model)

        output = format_type(request_id, body.model, int(time.time()))
        watch = DisconnectWatch(request.receive)
        entries = release_entries(self._release_log, tenant, request_id, self._idle_timeout_s, watch)
        try:
            if body.stream:
                response = await self._stream(watch, entries, output, body.include_usage, tenant, request_id)
            else:
                response = await self._respond_whole(watch, entries, output, request_id)
        except ClientDisconnected:
            watch.stop()
            await self._cancel_after_disconnect(tenant, request_id)
            return Response(status_code=CLIENT_CLOSED_STATUS)
        except BaseException:
            watch.stop()
            raise
        # A stream response stops the watch itself, once its last event is sent.
        if not isinstance(response, EventStreamResponse):
            watch.stop()
        return response

    async def _respond_whole(
        self, watch: DisconnectWatch, entries: AsyncIterator[ReleasedMessage], output: ResponseFormat, request_id: str
    ) -> Response:
        text, final = await watch.run(_collect(entries))
        finish = _finish_or_raise(final, output)
        return JSONResponse(output.response(text, finish), headers={"X-Request-Id": request_id})

    async def _stream(
        self,
        watch: DisconnectWatch,
        entries: AsyncIterator[ReleasedMessage],
        output: ResponseFormat,
        include_usage: bool,
        tenant: str,
        request_id: str,
    ) -> Response:
        first = await watch.run(anext(entries))
        if first.is_final:
            # Raise a blocked prompt or an early failure as an HTTP error, before any header is sent.
            _finish_or_raise(first.data, output)
        events = completion_events(first, entries, output, include_usage)
        on_disconnect = functools.partial(self._cancel_after_disconnect, tenant, request_id)
        return EventStreamResponse(events, watch, on_disconnect, headers={"X-Request-Id": request_id})

    async def _cancel_after_disconnect(self, tenant: str, request_id: str) -> None:
        try:
            cancelled = await self._canceller.cancel(tenant, request_id, reason=REASON_CLIENT_DISCONNECTED)
        except (RedisError, nats.errors.Error) as error:
            log.warning("cancel_after_disconnect_failed", request_id=request_id, tenant=tenant, error=repr(error))
            return
        log.info("client_disconnected", request_id=request_id, tenant=tenant, api="openai", cancelled=cancelled)


async def _collect(entries: AsyncIterator[ReleasedMessage]) -> tuple[str, dict[str, Any]]:
    """Return the released text and the final entry."""
    texts: list[str] = []
    async for entry in entries:
        if entry.is_final:
            return "".join(texts), entry.data
        texts.append(entry.data["text"])
    raise RuntimeError("the release log reader stopped before the final entry")


def _finish_or_raise(final: dict[str, Any], output: ResponseFormat) -> Finish:
    outcome = final_outcome(final, output.prompt_param)
    if isinstance(outcome, OpenAIError):
        raise outcome
    return outcome


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": UNKNOWN_CREATED_S, "owned_by": MODEL_OWNER}


def _check_model(experiments: ExperimentsFile, name: str) -> None:
    if find_model(experiments, name) is None:
        raise OpenAIError(
            404,
            "model_not_found",
            f"the model {name!r} does not exist: use an experiment key, a variant key or 'auto' "
            f"(GET /v1/models lists them)",
            param="model",
        )


def openai_router(
    tenant_dependency: Callable[..., Awaitable[str]],
    server: CompletionServer,
    experiments: Callable[[], ExperimentsFile],
) -> APIRouter:
    """Build the router; `experiments` returns the experiments file in force, read at each request."""
    router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)
    Tenant = Annotated[str, Depends(tenant_dependency)]

    async def complete(
        request: Request, tenant: str, body: ChatCompletionBody | CompletionBody, format_type: type[ResponseFormat]
    ) -> Response:
        check_supported(body)
        _check_model(experiments(), body.model)
        return await server.serve(request, tenant, body, format_type)

    @router.post("/chat/completions")
    async def create_chat_completion(body: ChatCompletionBody, request: Request, tenant: Tenant) -> Response:
        """Generate a chat completion, as OpenAI's endpoint of the same path."""
        return await complete(request, tenant, body, ChatFormat)

    @router.post("/completions")
    async def create_completion(body: CompletionBody, request: Request, tenant: Tenant) -> Response:
        """Generate a text completion; the prompt is sent as one user message."""
        return await complete(request, tenant, body, TextFormat)

    @router.get("/models")
    async def list_models(tenant: Tenant) -> dict[str, Any]:
        """List the names `model` accepts: `auto`, the experiment keys and the variant keys."""
        return {"object": "list", "data": [_model_object(name) for name in model_names(experiments())]}

    @router.get("/models/{model}")
    async def retrieve_model(model: str, tenant: Tenant) -> dict[str, Any]:
        _check_model(experiments(), model)
        return _model_object(model)

    return router
