"""Wiring of the safety service: policy, input scanners, broker, consumer."""

from __future__ import annotations

import structlog
from faststream import AckPolicy, FastStream
from faststream.nats.annotations import NatsMessage

from services.safety.handler import AcceptedHandler
from services.safety.screening import Screener
from shared.bus import EventPublisher, durable_subscriber, make_broker
from shared.scanning import build_input_chain, load_policy
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import SAFETY_CONSUMER

log = structlog.get_logger(__name__)

SERVICE_NAME = "safety"


def make_app(settings: Settings) -> FastStream:
    """Build the service and its input scanners (about 6 s on the first call, which imports llm-guard).

    Raises `shared.scanning.PolicyError` when the policy file is invalid.
    """
    input_chain = build_input_chain(load_policy(settings.policy_file))
    broker = make_broker(settings.resolved_nats_url)
    handler = AcceptedHandler(Screener(input_chain), EventPublisher(broker))
    log.info("input_scanners_built", scanners=list(input_chain.names))

    # FastStream handles the messages of one fetch concurrently; the chain
    # runs one scan at a time, so only the publishes overlap.
    @durable_subscriber(broker, SAFETY_CONSUMER, ack_policy=AckPolicy.MANUAL)
    async def on_accepted(msg: NatsMessage) -> None:
        await handler.handle(msg)

    return build_app(SERVICE_NAME, broker, settings)
