"""Wiring of the safety service: policy, input scanners, broker, consumer."""

from __future__ import annotations

import structlog
from faststream import FastStream

from services.safety.handler import AcceptedHandler
from services.safety.screening import Screener
from shared.bus import EventPublisher, make_broker
from shared.pulling import ConcurrentPuller
from shared.scanning import build_input_chain, load_policy
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import SAFETY_CONSUMER

log = structlog.get_logger(__name__)

SERVICE_NAME = "safety"

# Messages handled at once. The chain runs one scan at a time, so only the
# publishes overlap; a few in flight keep the chain busy while they wait.
MAX_IN_FLIGHT = 16


def make_app(settings: Settings) -> FastStream:
    """Build the service and its input scanners (about 6 s on the first call, which imports llm-guard).

    Raises `shared.scanning.PolicyError` when the policy file is invalid.
    """
    input_chain = build_input_chain(load_policy(settings.policy_file))
    broker = make_broker(settings.resolved_nats_url)
    handler = AcceptedHandler(Screener(input_chain), EventPublisher(broker))
    log.info("input_scanners_built", scanners=list(input_chain.names))

    puller = ConcurrentPuller(SAFETY_CONSUMER, handler.handle, max_in_flight=MAX_IN_FLIGHT)
    return build_app(SERVICE_NAME, broker, settings, pullers=[puller])
