"""Wiring of the safety service: policy, input scanners, broker, consumer."""

from __future__ import annotations

import structlog
from faststream import FastStream

from services.safety.handler import AcceptedHandler
from services.safety.metrics import SafetyMetrics
from services.safety.screening import Screener
from shared.bus import EventPublisher, make_broker
from shared.config_store import POLICY_KEY, WatchedConfig, policy_parser
from shared.metrics import metrics_endpoints
from shared.pulling import ConcurrentPuller
from shared.scanning import Policy, build_input_chains, load_policy
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import SAFETY_CONSUMER

log = structlog.get_logger(__name__)

SERVICE_NAME = "safety"

# Messages handled at once. The chain runs one scan at a time, so only the
# publishes overlap; a few in flight keep the chain busy while they wait.
MAX_IN_FLIGHT = 16


def make_app(settings: Settings) -> FastStream:
    """Build the service (about 6 s on the first call, which imports llm-guard).

    The policy comes from the configuration bucket, seeded from
    `settings.policy_file`. Each valid change rebuilds the input scanners
    without a restart, and a request being screened finishes with the chain
    it started with. Raises `shared.scanning.PolicyError` when the policy file is invalid.
    """
    # Building the file's chain now names the file in any error and imports llm-guard before the service starts.
    build_input_chains(load_policy(settings.policy_file))
    # About 45 ms of CPU per rebuild of the shipped policy, so it runs in a worker thread.
    screener = WatchedConfig(POLICY_KEY, settings.policy_file, policy_parser(_build_screener), parse_in_thread=True)
    broker = make_broker(settings.resolved_nats_url)
    metrics = SafetyMetrics()
    handler = AcceptedHandler(lambda: screener.current, EventPublisher(broker), metrics)
    endpoints = metrics_endpoints(metrics.registry, settings.host, settings.safety_metrics_port, "SLUICE_SAFETY_METRICS_PORT")

    puller = ConcurrentPuller(SAFETY_CONSUMER, handler.handle, max_in_flight=MAX_IN_FLIGHT)
    # The screener starts first, so the first message finds the policy loaded.
    return build_app(SERVICE_NAME, broker, settings, pullers=[*endpoints, screener, puller])


def _build_screener(policy: Policy) -> Screener:
    chains = build_input_chains(policy)
    log.info("input_scanners_built", scanners=list(chains.default.names), profiles=len(policy.profiles()))
    return Screener(chains)
