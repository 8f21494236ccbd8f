"""`POST /v1/requests`, `GET /v1/requests/{request_id}` and `DELETE /v1/requests/{request_id}`."""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from shared.cancellation import REASON_CLIENT_REQUEST
from shared.queue_positions import QueuePositions

from services.ingress.acceptance import RequestAcceptor, check_idempotency_key, trace_context
from services.ingress.cancellation import RequestCanceller
from services.ingress.queue_position import read_queue_position
from services.ingress.errors import RequestAlreadyEndedError, RequestNotFoundError
from services.ingress.models import (
    AcceptedResponse,
    CancelResponse,
    CreateRequestBody,
    RequestStatusResponse,
    status_response,
)
from services.ingress.state_store import TERMINAL_STATUSES, RequestStateStore

log = structlog.get_logger(__name__)

# The route names that `url_for` builds the status and stream URLs from.
READ_ROUTE_NAME = "read_request"
STREAM_ROUTE_NAME = "stream_request"

_WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss"}


def accepted_response(request: Request, request_id: str) -> AcceptedResponse:
    """Build absolute URLs from the URL the client called, so they work behind the same host and port."""
    status_url = request.url_for(READ_ROUTE_NAME, request_id=request_id)
    stream_url = request.url_for(STREAM_ROUTE_NAME, request_id=request_id)
    stream_url = stream_url.replace(scheme=_WEBSOCKET_SCHEMES.get(stream_url.scheme, stream_url.scheme))
    return AcceptedResponse(request_id=request_id, status_url=str(status_url), stream_url=str(stream_url))


def requests_router(
    tenant_dependency: Callable[..., Awaitable[str]],
    acceptor: RequestAcceptor,
    state_store: RequestStateStore,
    canceller: RequestCanceller,
    queue_positions: QueuePositions,
) -> APIRouter:
    """Build the router; `tenant_dependency` is the FastAPI dependency that returns the caller's tenant."""
    router = APIRouter(prefix="/v1/requests", tags=["requests"])
    Tenant = Annotated[str, Depends(tenant_dependency)]

    @router.post("", status_code=202, response_model=AcceptedResponse)
    async def create_request(
        body: CreateRequestBody,
        request: Request,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header()] = None,
        traceparent: Annotated[str | None, Header()] = None,
        tracestate: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Queue a generation request and respond 202 once JetStream has stored `request.accepted`."""
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        spec = body.to_spec()
        trace = trace_context(traceparent, tracestate)
        acceptance = await acceptor.accept(
            tenant, spec, idempotency_key=idempotency_key, trace=trace, route=request.url.path
        )
        log.info("request_accepted", request_id=acceptance.request_id, tenant=tenant, repeated=acceptance.repeated)
        response = accepted_response(request, acceptance.request_id)
        return JSONResponse(response.model_dump(), status_code=202)

    @router.get("/{request_id}", name=READ_ROUTE_NAME, response_model=RequestStatusResponse)
    async def read_request(request_id: str, tenant: Tenant) -> RequestStatusResponse:
        """Return the request's status record; 404 for an unknown id or another tenant's request."""
        fields = await state_store.read(tenant, request_id)
        if fields is None:
            raise RequestNotFoundError(request_id)
        queue_position = await read_queue_position(queue_positions, tenant, request_id, fields)
        return status_response(request_id, fields, queue_position)

    @router.delete("/{request_id}", status_code=202, response_model=CancelResponse)
    async def cancel_request(request_id: str, request: Request, tenant: Tenant) -> JSONResponse:
        """Stop the request: generation ends within one token and the status turns `cancelled`.

        404 for an unknown id or another tenant's request, 409 when the request has already ended.
        """
        status = await state_store.status(tenant, request_id)
        if status is None:
            raise RequestNotFoundError(request_id)
        if status in TERMINAL_STATUSES:
            raise RequestAlreadyEndedError(request_id, status.value)
        await canceller.cancel_unchecked(tenant, request_id, REASON_CLIENT_REQUEST, status)
        status_url = str(request.url_for(READ_ROUTE_NAME, request_id=request_id))
        body = CancelResponse(request_id=request_id, status=status.value, status_url=status_url)
        return JSONResponse(body.model_dump(), status_code=202)

    return router
