"""Accepting a request: size check, idempotency, the initial status record and the `request.accepted` event.

The route responds 202 only after JetStream acknowledged the event. When
publishing fails, the status record and the idempotency key written for the
request are deleted again, so nothing half-written stays.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta

import nats.errors
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from shared.bus import EventPublisher
from shared.events import AcceptedPayload, Envelope, EventType, RequestSpec, new_envelope, utc_now
from shared.trace_context import request_trace

from services.ingress.errors import (
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    PromptTooLargeError,
    ServiceUnavailableError,
)
from services.ingress.auth import current_api_key
from services.ingress.idempotency import IdempotencyRecord, IdempotencyStore
from services.ingress.projection import state_update
from services.ingress.quotas import QuotaLimiter, estimated_tokens
from services.ingress.state_store import RequestStateStore

log = structlog.get_logger(__name__)

# Long enough for common client-generated ids (a UUID is 36 characters). The
# key becomes part of a Redis key, so its length stays bounded.
MAX_IDEMPOTENCY_KEY_CHARS = 255
_IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]+$")


def trace_context(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """Return the trace context of an accepted request: the client's, or a new trace when it sent no valid one.

    A malformed `traceparent` is ignored, with its `tracestate`, as W3C Trace
    Context requires. The `request.accepted` event is then published as a
    child span of the returned context.
    """
    return request_trace(traceparent, tracestate)


def prompt_chars(spec: RequestSpec) -> int:
    return sum(len(message.content) for message in spec.messages)


def body_digest(spec: RequestSpec) -> str:
    """Return the SHA-256 of the request as the events carry it, so `prompt` and the same single message match."""
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def is_valid_idempotency_key(key: str) -> bool:
    """Return whether `key` is 1 to 255 printable ASCII characters without spaces."""
    return len(key) <= MAX_IDEMPOTENCY_KEY_CHARS and _IDEMPOTENCY_KEY_PATTERN.match(key) is not None


def check_idempotency_key(key: str) -> None:
    """Raise `InvalidRequestError` (422) unless `key` is 1 to 255 printable ASCII characters without spaces."""
    if not is_valid_idempotency_key(key):
        raise InvalidRequestError(
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters without spaces "
            f"(received {len(key)} characters); a UUID works",
            field="Idempotency-Key",
        )


@dataclass(frozen=True)
class Acceptance:
    request_id: str
    # True when the id is that of an earlier request with the same Idempotency-Key and body.
    repeated: bool


class RequestAcceptor:
    """Turns a validated request into a published `request.accepted` event."""

    def __init__(
        self,
        *,
        state_store: RequestStateStore,
        idempotency: IdempotencyStore,
        publisher: EventPublisher,
        max_prompt_chars: int,
        request_timeout_s: float,
        quotas: QuotaLimiter | None = None,
        accepted_counter: Counter | None = None,
    ) -> None:
        self._quotas = quotas
        # A counter labelled by tenant, or None to count nothing.
        self._accepted_counter = accepted_counter
        self._state_store = state_store
        self._idempotency = idempotency
        self._publisher = publisher
        self._max_prompt_chars = max_prompt_chars
        self._request_timeout = timedelta(seconds=request_timeout_s)

    async def accept(
        self,
        tenant: str,
        spec: RequestSpec,
        *,
        idempotency_key: str | None = None,
        trace: dict[str, str] | None = None,
        route: str | None = None,
    ) -> Acceptance:
        """Publish `request.accepted` for `spec` and return its request id.

        `route` is the HTTP route that accepted the request; the envelope
        carries it so that every stage applies that route's policy.

        Raises `PromptTooLargeError` (413), `QuotaExceededError` (429),
        `IdempotencyKeyReusedError` (422), `IdempotencyKeyInUseError` (409),
        `ServiceUnavailableError` (503) when NATS does not acknowledge, and
        `redis.exceptions.RedisError`.
        """
        size = self._check_size(spec)
        await self._charge_quota(spec, size)
        record = IdempotencyRecord(uuid.uuid4().hex, body_digest(spec))
        if idempotency_key is not None:
            earlier = await self._reserve(tenant, idempotency_key, record)
            if earlier is not None:
                return Acceptance(earlier.request_id, repeated=True)

        envelope = self._envelope(tenant, record.request_id, spec, size, idempotency_key, trace or {}, route)
        await self._record_and_publish(envelope, idempotency_key)

        if idempotency_key is not None:
            # NOTE: when this write fails the request is queued but the client gets 503;
            # the unconfirmed key expires soon and a retry after that queues a second request.
            await self._idempotency.mark_accepted(tenant, idempotency_key, record)
        if self._accepted_counter is not None:
            self._accepted_counter.labels(tenant=tenant).inc()
        return Acceptance(record.request_id, repeated=False)

    def _check_size(self, spec: RequestSpec) -> int:
        size = prompt_chars(spec)
        if size > self._max_prompt_chars:
            raise PromptTooLargeError(
                "prompt_too_large",
                f"the prompt has {size} characters; the limit is {self._max_prompt_chars} "
                "(SLUICE_MAX_PROMPT_CHARS): shorten the messages",
            )
        return size

    async def _charge_quota(self, spec: RequestSpec, size: int) -> None:
        """Charge the authenticating key's quota before anything is written, so a 429 leaves no state.

        NOTE: a repeated request with the same Idempotency-Key is charged again,
        and so is a request that then fails with 503.
        """
        key = current_api_key()
        if self._quotas is not None and key is not None:
            await self._quotas.charge(key, estimated_tokens(spec, size))

    async def _reserve(self, tenant: str, key: str, record: IdempotencyRecord) -> IdempotencyRecord | None:
        """Reserve `key` for `record`; return the earlier record when the same body was sent before."""
        earlier = await self._idempotency.reserve(tenant, key, record)
        if earlier is None:
            return None
        if earlier.body_sha256 != record.body_sha256:
            raise IdempotencyKeyReusedError(
                "idempotency_key_reused",
                f"Idempotency-Key {key!r} was used for request {earlier.request_id} with a different body; "
                "send the same body to get that request, or use a new key for a new request",
                field="Idempotency-Key",
            )
        if not earlier.accepted:
            raise IdempotencyKeyInUseError(
                "idempotency_key_in_use",
                f"a request with Idempotency-Key {key!r} is still being accepted; retry in a moment",
                field="Idempotency-Key",
            )
        return earlier

    def _envelope(
        self,
        tenant: str,
        request_id: str,
        spec: RequestSpec,
        size: int,
        key: str | None,
        trace: dict[str, str],
        route: str | None,
    ) -> Envelope:
        payload = AcceptedPayload(request=spec, prompt_chars=size, idempotency_key=key)
        deadline = utc_now() + self._request_timeout
        return new_envelope(
            EventType.ACCEPTED,
            request_id=request_id,
            tenant=tenant,
            payload=payload,
            deadline=deadline,
            trace=trace,
            route=route,
        )

    async def _record_and_publish(self, envelope: Envelope, idempotency_key: str | None) -> None:
        """Write the initial status record, then publish; on any failure delete what was written and re-raise."""
        update = state_update(envelope)
        try:
            if update is not None:
                await self._state_store.apply(envelope.tenant, envelope.request_id, update)
            await self._publish(envelope)
        except Exception:
            await self._undo(envelope, idempotency_key)
            raise

    async def _publish(self, envelope: Envelope) -> None:
        try:
            await self._publisher.publish(envelope)
        except nats.errors.Error as error:
            log.warning("accepted_publish_failed", request_id=envelope.request_id, tenant=envelope.tenant, error=repr(error))
            raise ServiceUnavailableError(
                "event_bus_unavailable",
                "the request could not be queued because NATS JetStream did not acknowledge it; "
                "nothing was stored, retry later",
            ) from error

    async def _undo(self, envelope: Envelope, idempotency_key: str | None) -> None:
        # NOTE: after a publish timeout the event may still have reached JetStream;
        # the projector then recreates the status record from it.
        try:
            await self._state_store.delete(envelope.tenant, envelope.request_id)
            if idempotency_key is not None:
                await self._idempotency.release(envelope.tenant, idempotency_key)
        except RedisError as error:
            log.error("acceptance_undo_failed", request_id=envelope.request_id, tenant=envelope.tenant, error=repr(error))
