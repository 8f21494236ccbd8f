"""Wiring of the inference service: configuration, endpoint pools, Redis, broker, one admission loop per pool."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as redis
from faststream import FastStream

from services.inference.admission import AdmissionLoop
from services.inference.cancellation import CancelListener, RunningRequests
from services.inference.endpoint_pool import BackendFactory, EndpointPool
from services.inference.generation import Generator
from services.inference.handler import AssignedHandler
from services.inference.metrics import InferenceMetrics
from services.inference.openai_compatible import OpenAICompatibleBackend
from services.inference.tgi import TgiBackend
from shared.bus import EventPublisher, make_broker
from shared.cancellation import CancelMarks
from shared.experiments import BackendConfig, load_serving_config
from shared.metrics import metrics_endpoints
from shared.queue_positions import QueuePositions
from shared.release_log import ReleaseLog
from shared.service import build_app
from shared.settings import Settings

SERVICE_NAME = "inference"

_BACKEND_KINDS: dict[str, BackendFactory] = {
    "tgi": TgiBackend,
    "openai": OpenAICompatibleBackend,
}


def make_pools(configs: Mapping[str, BackendConfig]) -> dict[str, EndpointPool]:
    """Build one endpoint pool per configured backend name, with a client of the backend's kind per endpoint."""
    return {name: EndpointPool(name, config, _BACKEND_KINDS[config.kind]) for name, config in configs.items()}


def make_app(settings: Settings) -> FastStream:
    """Build the service. Raises `shared.experiments.ConfigError` when a config file is invalid."""
    config = load_serving_config(settings)
    broker = make_broker(settings.resolved_nats_url)
    publisher = EventPublisher(broker)
    redis_client = redis.from_url(settings.resolved_redis_url)
    release_log = ReleaseLog(redis_client, settings.request_state_ttl_s)
    pools = make_pools(config.backends)
    running = RunningRequests()
    cancel_marks = CancelMarks(redis_client, settings.request_state_ttl_s)
    metrics = InferenceMetrics()
    handler = AssignedHandler(Generator(pools, publisher, metrics), release_log, publisher, running, cancel_marks)
    cancel_listener = CancelListener(lambda: broker.connection, running)

    async def close_clients() -> None:
        for pool in pools.values():
            await pool.close()
        await redis_client.aclose()

    # Each loop fetches a message only when one of its pool's slots is free, so
    # waiting requests stay in JetStream rather than in memory.
    positions = QueuePositions(redis_client, settings.request_state_ttl_s)
    admission_loops = [
        AdmissionLoop(name, backend.max_in_flight, handler.handle, positions, settings.tenant_weights)
        for name, backend in config.backends.items()
    ]
    for loop in admission_loops:
        metrics.watch_queue(loop.backend, loop.waiting_requests)
    endpoints = metrics_endpoints(
        metrics.registry, settings.host, settings.inference_metrics_port, "SLUICE_INFERENCE_METRICS_PORT"
    )
    # The listener starts before the loops and stops after them, so no generation runs without it.
    pullers = [*endpoints, cancel_listener, *admission_loops]
    return build_app(SERVICE_NAME, broker, settings, pullers=pullers, on_shutdown=close_clients)
