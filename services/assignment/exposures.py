"""Exposure events: one `experiment.exposed` per tenant, experiment and unit per session.

A session is a period of activity: the first request of a unit in an
experiment publishes the exposure and opens the session, and each later
request within `session_s` seconds publishes nothing and extends it. The
session is a Redis key with a TTL,
`sluice:exposure:<tenant>:["<experiment key>", <bucket version>, "<unit>"]`,
whose value is the id of the request that published the exposure. The
bucket version is in the key because bumping it may give the unit another
variant, which needs an exposure of its own.

The mark is set with SET NX EX only after the publish succeeded, so a crash
between the two loses nothing: the redelivered `request.screened` finds no
mark, or a mark that contains its own request id, and publishes again. The
event id derives from the request id, so JetStream's duplicate window and
the telemetry table keep one copy. Two requests of the same unit that
arrive together may both publish: a duplicate exposure, never a lost one.

A request-id unit never repeats, so its exposure is published without a
mark. When Redis fails, the exposure is published too (a possible
duplicate), with a warning and a count in `sluice_assignment_redis_errors_total`.
"""

from __future__ import annotations

import json

import redis.asyncio as redis
import structlog
from redis.exceptions import RedisError

from services.assignment.assigner import REQUEST_ID_ATTRIBUTE, Assignment
from services.assignment.metrics import AssignmentMetrics
from shared.bus import EventPublisher
from shared.events import Envelope, EventType, ExposedPayload

log = structlog.get_logger(__name__)

KEY_PREFIX = "sluice:exposure:"


def exposure_key(tenant: str, experiment_key: str, bucket_version: int, unit: str) -> str:
    """Return the Redis key of a unit's session in an experiment. JSON keeps keys and units that contain ':' apart."""
    return f"{KEY_PREFIX}{tenant}:{json.dumps([experiment_key, bucket_version, unit])}"


def exposed_payload(assignment: Assignment) -> ExposedPayload:
    """Return the exposure of an assignment inside an experiment. The hash is set only when it chose the variant."""
    if assignment.experiment_key is None or assignment.source is None:
        raise ValueError("invalid assignment: experiment_key is None, so the unit was exposed to no experiment")
    return ExposedPayload(
        experiment_key=assignment.experiment_key,
        variant_key=assignment.variant.key,
        hash_attribute=assignment.hash_attribute,
        unit=assignment.unit,
        hash_value=assignment.hash_value if assignment.source == "hash" else None,
        bucket_version=assignment.bucket_version,
        source=assignment.source,
    )


class ExposurePublisher:
    """Publishes a request's exposure unless its unit's session in the experiment already has one.

    Raises what `EventPublisher.publish` raises, so the caller can have the
    message redelivered. Redis failures are logged and counted, not raised.
    """

    def __init__(
        self, publisher: EventPublisher, client: redis.Redis, session_s: int, metrics: AssignmentMetrics
    ) -> None:
        self._publisher = publisher
        self._redis = client
        self._session_s = session_s
        self._metrics = metrics

    async def expose(self, envelope: Envelope, assignment: Assignment) -> bool:
        """Publish the exposure of `assignment` (an assignment in an experiment) when it is new, and return whether it was published."""
        payload = exposed_payload(assignment)
        if assignment.hash_attribute == REQUEST_ID_ATTRIBUTE:
            await self._publish(envelope, payload)
            return True

        key = exposure_key(envelope.tenant, payload.experiment_key, payload.bucket_version, payload.unit)
        if await self._session_held_by_other(key, envelope.request_id):
            return False
        await self._publish(envelope, payload)
        await self._mark(key, envelope.request_id)
        return True

    async def _session_held_by_other(self, key: str, request_id: str) -> bool:
        """Return whether another request opened the unit's session, and extend the session if so."""
        try:
            holder = await self._redis.get(key)
            if holder is None or holder == request_id:
                return False
            await self._redis.expire(key, self._session_s)
        except RedisError as error:
            self._report(error, "exposure_check")
            return False
        return True

    async def _mark(self, key: str, request_id: str) -> None:
        try:
            await self._redis.set(key, request_id, nx=True, ex=self._session_s)
        except RedisError as error:
            self._report(error, "exposure_mark")

    async def _publish(self, envelope: Envelope, payload: ExposedPayload) -> None:
        await self._publisher.publish(envelope.follow_up(EventType.EXPOSED, payload))
        self._metrics.exposures.labels(experiment=payload.experiment_key, source=payload.source).inc()

    def _report(self, error: RedisError, operation: str) -> None:
        log.warning("exposure_session_unavailable", operation=operation, fallback="publish", error=repr(error))
        self._metrics.redis_errors.labels(operation=operation).inc()
