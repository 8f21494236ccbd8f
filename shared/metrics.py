"""A bus service's Prometheus `/metrics` endpoint, served on its own port while the service runs.

Each service keeps its metrics in a `CollectorRegistry` of its own, so
several services in one process (as in tests) do not collide in
prometheus-client's global registry. The endpoint is a `shared.service.Puller`,
so `build_app` starts it with the consumers and stops it after them.
"""

from __future__ import annotations

import asyncio
import threading
from wsgiref.simple_server import WSGIServer

import structlog
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, start_http_server

log = structlog.get_logger(__name__)

# Histogram buckets, in seconds, for work that takes from about a millisecond
# (an assignment, a regex scan) to a minute (a long generation on a slow backend).
DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MetricsEndpoint:
    """Serves `registry` at `http://HOST:PORT/metrics` from a daemon thread of prometheus-client.

    `port_setting` names the environment variable that sets the port, for the
    message of a port that is already taken.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int, port_setting: str) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._port_setting = port_setting
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self, jetstream: JetStreamContext) -> None:
        """Bind the port and start serving. Raises `OSError`, with the fix in its message, when the port is taken.

        `jetstream` is unused: the parameter fits `shared.service.Puller`.
        """
        try:
            self._server, self._thread = start_http_server(self._port, addr=self._host, registry=self._registry)
        except OSError as error:
            raise OSError(
                error.errno,
                f"could not serve metrics on {self._host}:{self._port} ({error.strerror}); set "
                f"{self._port_setting} to a free port, or to 0 to turn the metrics endpoint off",
            ) from error
        log.info("metrics_server_started", host=self._host, port=self._port)

    async def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None or self._thread is None:
            return
        await asyncio.to_thread(self._shutdown, self._server, self._thread)
        self._server = None
        self._thread = None
        log.info("metrics_server_stopped", port=self._port)

    @staticmethod
    def _shutdown(server: WSGIServer, thread: threading.Thread) -> None:
        server.shutdown()
        server.server_close()
        thread.join()


def metrics_endpoints(registry: CollectorRegistry, host: str, port: int, port_setting: str) -> list[MetricsEndpoint]:
    """Return the service's endpoint in a list to put first among its pullers, or an empty list when `port` is 0."""
    # Port 0 turns the endpoint off rather than binding a random port.
    if port == 0:
        return []
    return [MetricsEndpoint(registry, host, port, port_setting)]
