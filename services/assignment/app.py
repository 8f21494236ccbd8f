"""Wiring of the assignment service: configuration, broker, consumer."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats.annotations import NatsMessage

from services.assignment.assigner import Assigner
from services.assignment.handler import ScreenedHandler
from shared.bus import EventPublisher, durable_subscriber, make_broker
from shared.experiments import load_serving_config
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import ASSIGNMENT_CONSUMER

SERVICE_NAME = "assignment"


def make_app(settings: Settings) -> FastStream:
    """Build the service. Raises `shared.experiments.ConfigError` when a config file is invalid."""
    config = load_serving_config(settings)
    broker = make_broker(settings.resolved_nats_url)
    handler = ScreenedHandler(Assigner(config.experiments), EventPublisher(broker))

    @durable_subscriber(broker, ASSIGNMENT_CONSUMER, ack_policy=AckPolicy.MANUAL)
    async def on_screened(msg: NatsMessage) -> None:
        await handler.handle(msg)

    return build_app(SERVICE_NAME, broker, settings)
