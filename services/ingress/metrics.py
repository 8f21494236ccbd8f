"""The ingress's Prometheus metrics, served at `GET /metrics` on its own HTTP port.

    sluice_ingress_request_duration_seconds          histogram by method, route, status: every HTTP request
    sluice_ingress_requests_accepted_total           counter by tenant: requests accepted (202), repeats of an Idempotency-Key excluded
    sluice_ingress_websocket_streams_in_flight       gauge: WebSocket output streams open now

The route label is the route's path template, such as
`/v1/requests/{request_id}`, so request ids never become label values.
`/metrics` needs no API key, like `/healthz`, because Prometheus scrapes it
without credentials.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import DURATION_BUCKETS_S

METRIC_PREFIX = "sluice_ingress"
# The route label of a request that matched no route (a 404 from the router),
# one value for every unknown path.
UNMATCHED_ROUTE = "unmatched"


class IngressMetrics:
    """The request histogram, acceptance counter and stream gauge of one ingress app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_duration = Histogram(
            f"{METRIC_PREFIX}_request_duration_seconds",
            "Duration of each HTTP request, from its start to the end of the response body.",
            ["method", "route", "status"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        # prometheus-client appends `_total` to counter names.
        self.requests_accepted = Counter(
            f"{METRIC_PREFIX}_requests_accepted",
            "Requests accepted and published as request.accepted; repeats of an Idempotency-Key are not counted.",
            ["tenant"],
            registry=self.registry,
        )
        self.streams_in_flight = Gauge(
            f"{METRIC_PREFIX}_websocket_streams_in_flight",
            "WebSocket output streams open now, from authorization to close.",
            registry=self.registry,
        )


class RequestDurationMiddleware:
    """Observes each HTTP request's duration by method, route template and status; other scopes pass through."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self._app = app
        self._histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_with_status)
        finally:
            # FastAPI puts the matched route in the scope during routing.
            route = scope.get("route")
            template = getattr(route, "path", UNMATCHED_ROUTE)
            labels = {"method": scope["method"], "route": template, "status": str(status)}
            self._histogram.labels(**labels).observe(time.perf_counter() - started)


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics")
    async def metrics() -> Response:
        """Return the ingress's metrics in the Prometheus text format; needs no API key."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
