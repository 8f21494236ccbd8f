"""Wiring of the moderation service: policy, output scanners, Redis, broker, consumer."""

from __future__ import annotations

import redis.asyncio as redis
import structlog
from faststream import FastStream

from services.moderation.handler import ChunkHandler
from services.moderation.holdback import OutputPolicy
from services.moderation.metrics import ModerationMetrics
from services.moderation.moderator import Moderator
from services.moderation.sink import OutputSink
from services.moderation.stream import StreamTable
from shared.bus import EventPublisher, make_broker
from shared.config_store import POLICY_KEY, WatchedConfig, policy_parser
from shared.metrics import metrics_endpoints
from shared.pulling import BatchPuller, one_at_a_time
from shared.release_log import ReleaseLog
from shared.scanning import Policy, load_policy
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import MODERATION_CONSUMER

log = structlog.get_logger(__name__)

SERVICE_NAME = "moderation"

# A request's chunks must be handled one after another in stream order, so
# the messages of a fetch are handled in turn. Up to this many come in one
# fetch, one round trip to nats-server. A fetch returns what is already
# there, so a batch never waits to fill.
# NOTE: a full batch is handled before the next fetch. At 50 requests/s the
# service spent about 1.5 ms of CPU per chunk message (make bench), so 64
# messages can hold the next fetch for tens of milliseconds under load.
FETCH_BATCH_SIZE = 64


def make_app(settings: Settings) -> FastStream:
    """Build the service (about 6 s on the first call, which imports llm-guard).

    The policy comes from the configuration bucket, seeded from
    `settings.policy_file`. Each valid change rebuilds the output scanners
    without a restart. An output that is streaming keeps the scanners it
    started with, and the outputs that start later use the new ones.
    Raises `shared.scanning.PolicyError` when the policy file is invalid.
    """
    # Building the file's scanners now names the file in any error and imports llm-guard before the service starts.
    OutputPolicy(load_policy(settings.policy_file))
    scanners = WatchedConfig(POLICY_KEY, settings.policy_file, policy_parser(_build_scanners), parse_in_thread=True)
    broker = make_broker(settings.resolved_nats_url)
    redis_client = redis.from_url(settings.resolved_redis_url)
    sink = OutputSink(ReleaseLog(redis_client, settings.request_state_ttl_s), EventPublisher(broker))
    # A stream silent for a whole request timeout belongs to a request that every stage has given up on.
    table = StreamTable(idle_timeout_s=settings.request_timeout_s)
    metrics = ModerationMetrics()
    moderator = Moderator(lambda: scanners.current, sink, table, metrics)
    handler = ChunkHandler(moderator)
    endpoints = metrics_endpoints(
        metrics.registry, settings.host, settings.moderation_metrics_port, "SLUICE_MODERATION_METRICS_PORT"
    )

    puller = BatchPuller(MODERATION_CONSUMER, one_at_a_time(handler.handle), batch_size=FETCH_BATCH_SIZE)
    # The scanners start first, so the first message finds the policy loaded.
    pullers = [*endpoints, scanners, puller]
    return build_app(SERVICE_NAME, broker, settings, pullers=pullers, on_shutdown=redis_client.aclose)


def _build_scanners(policy: Policy) -> OutputPolicy:
    output_policy = OutputPolicy(policy)
    default = output_policy.default
    log.info(
        "output_scanners_built",
        scanners=list(default.full_chain.names),
        holdback_chars=default.holdback.holdback_chars,
        refusal_scanners=sorted(default.refusal_scanners),
        redacting_scanners=list(default.holdback.redactor_names),
        profiles=len(policy.profiles()),
    )
    return output_policy
