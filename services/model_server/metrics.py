"""`GET /metrics`: the engine's generation counters in the Prometheus text format, as TGI exposes its own.

A collector reads the counters at each scrape, and each app has its own
registry, so several servers in one process (as in tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.model_server.engine import GenerationEngine

METRIC_PREFIX = "sluice_model_server"


class _EngineCollector(Collector):
    def __init__(self, engine: GenerationEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        counters = self._engine.counters
        generations = CounterMetricFamily(
            f"{METRIC_PREFIX}_generations", "Generations by how they ended.", labels=["outcome"]
        )
        generations.add_metric(["finished"], counters.finished)
        generations.add_metric(["stopped"], counters.stopped)
        generations.add_metric(["failed"], counters.failed)
        yield generations
        yield CounterMetricFamily(
            f"{METRIC_PREFIX}_generated_tokens", "Tokens generated, over all generations.", value=counters.generated_tokens
        )
        in_flight = counters.started - counters.finished - counters.stopped - counters.failed
        yield GaugeMetricFamily(f"{METRIC_PREFIX}_generations_in_flight", "Generations running now.", value=in_flight)


def metrics_router(engine: GenerationEngine) -> APIRouter:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_EngineCollector(engine))
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics")
    async def metrics() -> Response:
        """Return the generation counters in the Prometheus text format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
