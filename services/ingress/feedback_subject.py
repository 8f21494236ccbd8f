"""The feedback subject: core NATS request/reply for internal systems, handled by one ingress replica.

    request  {"tenant", "request_id", "kind", "value", "metadata"?, "idempotency_key"}
    reply    {"feedback_id": str, "status": "accepted" | "duplicate"}
             or {"error": {"code": str, "message": str, "field": str | null}}

The body is the HTTP body plus `tenant`: services on the bus are trusted to
name the tenant, as they are for every event they publish. Validation,
attribution and idempotency are the HTTP route's, through the same
`FeedbackRecorder`, and the error codes are the HTTP API's.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError
from redis.exceptions import RedisError

from shared.subjects import FEEDBACK_QUEUE_GROUP, FEEDBACK_SUBMIT_SUBJECT

from services.ingress.acceptance import trace_context
from services.ingress.errors import ApiError
from services.ingress.feedback import FeedbackRecorder, FeedbackSubmission
from services.ingress.feedback_validation import FeedbackMessage

log = structlog.get_logger(__name__)


def error_reply(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def validation_reply(error: ValidationError) -> dict[str, Any]:
    """Return the error reply of the first invalid field, with a message that lists every problem."""
    problems = error.errors(include_input=False, include_url=False)
    fields = [".".join(str(part) for part in problem["loc"]) or "body" for problem in problems]
    summary = "; ".join(f"{field}: {problem['msg']}" for field, problem in zip(fields, problems))
    return error_reply("invalid_request", f"invalid feedback: {summary}", fields[0])


class FeedbackResponder:
    """Replies to requests on the feedback subject in the ingress queue group, so each goes to one replica."""

    def __init__(self, recorder: FeedbackRecorder) -> None:
        self._recorder = recorder
        self._subscription: Subscription | None = None

    async def start(self, connection: NatsClient) -> None:
        self._subscription = await connection.subscribe(
            FEEDBACK_SUBMIT_SUBJECT, queue=FEEDBACK_QUEUE_GROUP, cb=self._respond
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def _respond(self, message: Msg) -> None:
        reply = await self.reply(message.data, message.headers or {})
        if message.reply:
            await message.respond(json.dumps(reply).encode())

    async def reply(self, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """Record the feedback in `data` and return the reply.

        Invalid input, rejected feedback and Redis failures become error
        replies. `headers` may carry W3C `traceparent` and `tracestate`, as
        HTTP does.
        """
        try:
            body = FeedbackMessage.model_validate_json(data)
        except ValidationError as error:
            return validation_reply(error)
        submission = FeedbackSubmission(
            tenant=body.tenant,
            body=body,
            idempotency_key=body.idempotency_key,
            channel="nats",
            trace=trace_context(headers.get("traceparent"), headers.get("tracestate")),
        )
        return await self._record(submission)

    async def _record(self, submission: FeedbackSubmission) -> dict[str, Any]:
        try:
            outcome = await self._recorder.record(submission)
        except ApiError as error:
            log.info("feedback_rejected", tenant=submission.tenant, channel="nats", code=error.code)
            return error_reply(error.code, error.message, error.field)
        except RedisError as error:
            log.warning("feedback_redis_failed", tenant=submission.tenant, channel="nats", error=repr(error))
            return error_reply("state_store_unavailable", "the request state store (Redis) is unavailable; retry later")
        return {"feedback_id": outcome.feedback_id, "status": outcome.status}
