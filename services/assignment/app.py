"""Wiring of the assignment service: configuration, broker, consumer."""

from __future__ import annotations

from faststream import FastStream

from services.assignment.assigner import Assigner
from services.assignment.handler import ScreenedHandler
from services.assignment.metrics import AssignmentMetrics
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
    metrics = AssignmentMetrics()
    handler = ScreenedHandler(lambda: assigner.current, EventPublisher(broker), metrics)
    endpoints = metrics_endpoints(
        metrics.registry, settings.host, settings.assignment_metrics_port, "SLUICE_ASSIGNMENT_METRICS_PORT"
    )

    puller = ConcurrentPuller(ASSIGNMENT_CONSUMER, handler.handle, max_in_flight=MAX_IN_FLIGHT)
    # The assigner starts first, so the first message finds the experiments loaded.
    return build_app(SERVICE_NAME, broker, settings, pullers=[*endpoints, assigner, puller])


def _assigner_parser(settings: Settings) -> Parser[Assigner]:
    # The assigner computes its bucket ranges once per value, not per request.
    parse_experiments = experiments_parser(settings)
    return lambda key, data: Assigner(parse_experiments(key, data))
