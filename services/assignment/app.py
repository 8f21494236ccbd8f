"""Wiring of the assignment service: configuration, broker, Redis, consumer."""

from __future__ import annotations

import redis.asyncio as redis
from faststream import FastStream
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.assignment.assigner import Assigner
from services.assignment.exposures import ExposurePublisher
from services.assignment.handler import ScreenedHandler
from services.assignment.metrics import AssignmentMetrics
from services.assignment.sticky_store import StickyBucketStore
from shared.bus import EventPublisher, make_broker
from shared.config_store import EXPERIMENTS_KEY, WatchedConfig, experiments_parser
from shared.metrics import metrics_endpoints
from shared.pulling import ConcurrentPuller
from shared.experiments import load_serving_config
from shared.runtime_config import Parser
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import ASSIGNMENT_CONSUMER

SERVICE_NAME = "assignment"

# Messages handled at once. Assigning takes microseconds and the publish
# waits on the network, so several in flight overlap those waits.
MAX_IN_FLIGHT = 16

# A healthy Redis replies in about a millisecond on the same host or network.
# Half a second only runs out when it is down or stalled, and bounds what
# an outage adds to a request: at most four calls, about 2 s, after which
# the request is assigned by hash.
REDIS_TIMEOUT_S = 0.5


def make_app(settings: Settings) -> FastStream:
    """Build the service. Raises `shared.experiments.ConfigError` when a config file is invalid.

    The experiments come from the configuration bucket, seeded from
    `settings.experiments_file`, and each valid change replaces the assigner
    without a restart.
    """
    # Checks both files now, so an invalid one fails here with its path in the message.
    load_serving_config(settings)
    assigner = WatchedConfig(EXPERIMENTS_KEY, settings.experiments_file, _assigner_parser(settings))
    broker = make_broker(settings.resolved_nats_url)
    publisher = EventPublisher(broker)
    metrics = AssignmentMetrics()
    redis_client = _redis_client(settings.resolved_redis_url)
    sticky_store = StickyBucketStore(redis_client, settings.assignment_sticky_bucket_ttl_s, metrics)
    exposures = ExposurePublisher(publisher, redis_client, settings.assignment_exposure_session_s, metrics)
    handler = ScreenedHandler(lambda: assigner.current, publisher, sticky_store, exposures, metrics)
    endpoints = metrics_endpoints(
        metrics.registry, settings.host, settings.assignment_metrics_port, "SLUICE_ASSIGNMENT_METRICS_PORT"
    )

    async def close_redis() -> None:
        await redis_client.aclose()

    puller = ConcurrentPuller(ASSIGNMENT_CONSUMER, handler.handle, max_in_flight=MAX_IN_FLIGHT)
    # The assigner starts first, so the first message finds the experiments loaded.
    return build_app(SERVICE_NAME, broker, settings, pullers=[*endpoints, assigner, puller], on_shutdown=close_redis)


def _redis_client(url: str) -> redis.Redis:
    """Return a client whose calls fail after `REDIS_TIMEOUT_S`, so a stalled Redis delays a request but never blocks it.

    It makes no retries (redis-py 8.2 retries 10 times by default), because the
    service falls back to the hash instead of waiting for Redis.
    """
    return redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), retries=0),
    )


def _assigner_parser(settings: Settings) -> Parser[Assigner]:
    # The assigner computes its bucket ranges once per value, not per request.
    parse_experiments = experiments_parser(settings)
    return lambda key, data: Assigner(parse_experiments(key, data))
