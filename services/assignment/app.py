"""Wiring of the assignment service: configuration, broker, consumer."""

from __future__ import annotations

from faststream import FastStream

from services.assignment.assigner import Assigner
from services.assignment.handler import ScreenedHandler
from shared.bus import EventPublisher, make_broker
from shared.pulling import ConcurrentPuller
from shared.experiments import load_serving_config
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import ASSIGNMENT_CONSUMER

SERVICE_NAME = "assignment"

# Messages handled at once. Assigning takes microseconds and the publish
# waits on the network, so several in flight overlap those waits.
MAX_IN_FLIGHT = 16


def make_app(settings: Settings) -> FastStream:
    """Build the service. Raises `shared.experiments.ConfigError` when a config file is invalid."""
    config = load_serving_config(settings)
    broker = make_broker(settings.resolved_nats_url)
    handler = ScreenedHandler(Assigner(config.experiments), EventPublisher(broker))

    puller = ConcurrentPuller(ASSIGNMENT_CONSUMER, handler.handle, max_in_flight=MAX_IN_FLIGHT)
    return build_app(SERVICE_NAME, broker, settings, pullers=[puller])
