"""`POST /v1/feedback`: a rating, thumbs, conversion or value on one of the caller's requests."""

# No `from __future__ import annotations`: FastAPI must evaluate the route
# signatures, which refer to dependencies local to the router factory.

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.ingress.acceptance import trace_context
from services.ingress.feedback import FeedbackOutcome, FeedbackRecorder, FeedbackSubmission
from services.ingress.feedback_validation import FeedbackBody, resolve_idempotency_key


class FeedbackResponse(BaseModel):
    """The feedback's id, the same for every repeat of its idempotency key, and whether this call recorded it."""

    feedback_id: str
    status: Literal["accepted", "duplicate"]


def feedback_response(outcome: FeedbackOutcome) -> JSONResponse:
    """Return 202 for newly accepted feedback and 200 for a repeat, which changed nothing."""
    body = FeedbackResponse(feedback_id=outcome.feedback_id, status=outcome.status)
    return JSONResponse(body.model_dump(), status_code=200 if outcome.duplicate else 202)


def feedback_router(tenant_dependency: Callable[..., Awaitable[str]], recorder: FeedbackRecorder) -> APIRouter:
    """Build the router; `tenant_dependency` is the FastAPI dependency that returns the caller's tenant."""
    router = APIRouter(prefix="/v1/feedback", tags=["feedback"])
    Tenant = Annotated[str, Depends(tenant_dependency)]

    @router.post("", status_code=202, response_model=FeedbackResponse)
    async def submit_feedback(
        body: FeedbackBody,
        request: Request,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header()] = None,
        traceparent: Annotated[str | None, Header()] = None,
        tracestate: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Record feedback on a request of the caller's tenant accepted within the attribution window.

        202 when recorded, 200 with the same feedback_id for a repeat of the
        same idempotency key and body. 404 for an unknown request or another
        tenant's, 409 when the window has closed, 422 for invalid input, 503
        with Retry-After when the telemetry store cannot be read.
        """
        key = resolve_idempotency_key(idempotency_key, body.idempotency_key)
        submission = FeedbackSubmission(
            tenant=tenant,
            body=body,
            idempotency_key=key,
            channel="http",
            trace=trace_context(traceparent, tracestate),
            route=request.url.path,
        )
        return feedback_response(await recorder.record(submission))

    return router
