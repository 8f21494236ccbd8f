"""Wiring of the inference service: configuration, backends, Redis, broker, consumer."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import redis.asyncio as redis
from faststream import FastStream

from services.inference.backends import Backend
from services.inference.generation import Generator
from services.inference.handler import AssignedHandler
from services.inference.openai_compatible import OpenAICompatibleBackend
from services.inference.tgi import TgiBackend
from shared.bus import EventPublisher, make_broker
from shared.experiments import BackendConfig, load_serving_config
from shared.pulling import ConcurrentPuller
from shared.release_log import ReleaseLog
from shared.service import build_app
from shared.settings import Settings
from shared.subjects import INFERENCE_CONSUMER

SERVICE_NAME = "inference"

# Maximum requests that one instance generates at once. The embedded model
# server runs on a few CPU cores, where more parallel streams only slow each
# other down, so scale out with more instances instead.
MAX_CONCURRENT_REQUESTS = 4

_BACKEND_KINDS: dict[str, Callable[[str, BackendConfig], Backend]] = {
    "tgi": TgiBackend,
    "openai": OpenAICompatibleBackend,
}


def make_backends(configs: Mapping[str, BackendConfig]) -> dict[str, Backend]:
    """Build one backend per configured name."""
    return {name: _BACKEND_KINDS[config.kind](name, config) for name, config in configs.items()}


def make_app(settings: Settings) -> FastStream:
    """Build the service. Raises `shared.experiments.ConfigError` when a config file is invalid."""
    config = load_serving_config(settings)
    broker = make_broker(settings.resolved_nats_url)
    publisher = EventPublisher(broker)
    redis_client = redis.from_url(settings.resolved_redis_url)
    release_log = ReleaseLog(redis_client, settings.request_state_ttl_s)
    backends = make_backends(config.backends)
    handler = AssignedHandler(Generator(backends, publisher), release_log, publisher)

    async def close_clients() -> None:
        for backend in backends.values():
            await backend.close()
        await redis_client.aclose()

    # The puller fetches no more than it has room for, so no message waits in
    # memory while its ack_wait runs out.
    puller = ConcurrentPuller(INFERENCE_CONSUMER, handler.handle, max_in_flight=MAX_CONCURRENT_REQUESTS)
    return build_app(SERVICE_NAME, broker, settings, pullers=[puller], on_shutdown=close_clients)
