"""The endpoints of one backend: a client and a circuit breaker each, and the choice of endpoint per try.

A try leases an endpoint with `EndpointPool.lease()`. The pool picks, among
the endpoints whose breaker allows a call and that have a free slot, the one
with the fewest requests in flight, the earliest in the file on a tie. The
outcome of the try goes to that endpoint's breaker when the lease ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass

from services.inference.backends import Backend, BackendError, NoEndpointAvailable
from services.inference.circuit_breaker import BreakerState, CircuitBreaker
from shared.experiments import BackendConfig

BackendFactory = Callable[[str, BackendConfig], Backend]


@dataclass
class Endpoint:
    """One server of a pool: its URL, its client, its breaker and the requests it serves now."""

    url: str
    backend: Backend
    breaker: CircuitBreaker
    in_flight: int = 0


class EndpointPool:
    """Chooses an endpoint per try and sends at most `max_in_flight_per_endpoint` requests at once to each.

    Safe to share between the tasks of one event loop, not between threads.
    """

    def __init__(
        self,
        name: str,
        config: BackendConfig,
        make_backend: BackendFactory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.max_in_flight_per_endpoint = config.max_in_flight_per_endpoint
        self.endpoints = tuple(
            Endpoint(
                url=url,
                backend=make_backend(name, config.for_endpoint(url)),
                breaker=CircuitBreaker(url, config.breaker_failure_threshold, config.breaker_open_s, clock),
            )
            for url in config.endpoint_urls
        )
        # Set whenever a slot frees, so that tries waiting for one look again.
        self._slot_freed = asyncio.Event()

    def breaker_states(self) -> dict[str, BreakerState]:
        """Return each endpoint's breaker state, by URL."""
        return {endpoint.url: endpoint.breaker.state for endpoint in self.endpoints}

    @asynccontextmanager
    async def lease(self, avoid: Collection[str] = ()) -> AsyncIterator[Endpoint]:
        """Reserve a slot on an endpoint for one try, and report the try's outcome to its breaker.

        Endpoints whose URL is in `avoid` are chosen only when no other one
        allows a call. When every allowed endpoint is full, this waits for a
        free slot. Raises `NoEndpointAvailable` at once when no breaker
        allows a call. A retryable `BackendError` counts as a failure of the
        endpoint, and any other end of the block as a success, except an
        exception that is not a `BackendError` (cancellation, for one), which
        leaves the breaker as it was.
        """
        endpoint, trial = await self._acquire(avoid)
        try:
            yield endpoint
        except BackendError as error:
            if error.retryable:
                endpoint.breaker.record_failure()
            else:
                endpoint.breaker.record_success()
            raise
        except BaseException:
            endpoint.breaker.abandon_call(trial)
            raise
        else:
            endpoint.breaker.record_success()
        finally:
            endpoint.in_flight -= 1
            self._slot_freed.set()

    async def close(self) -> None:
        """Close every endpoint's client; the service calls it once, at shutdown."""
        for endpoint in self.endpoints:
            await endpoint.backend.close()

    async def _acquire(self, avoid: Collection[str]) -> tuple[Endpoint, bool]:
        while True:
            endpoint = self._choose(avoid)
            if endpoint is not None:
                trial = endpoint.breaker.start_call()
                endpoint.in_flight += 1
                return endpoint, trial
            if not any(endpoint.breaker.allows_call() for endpoint in self.endpoints):
                raise NoEndpointAvailable(self._unavailable_message())
            # No await ran since the checks above, so no slot freed in between.
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def _choose(self, avoid: Collection[str]) -> Endpoint | None:
        free = [
            endpoint
            for endpoint in self.endpoints
            if endpoint.in_flight < self.max_in_flight_per_endpoint and endpoint.breaker.allows_call()
        ]
        preferred = [endpoint for endpoint in free if endpoint.url not in avoid] or free
        if not preferred:
            return None
        # min() returns the first of equal endpoints, so ties go to file order.
        return min(preferred, key=lambda endpoint: endpoint.in_flight)

    def _unavailable_message(self) -> str:
        states = ", ".join(f"{url}: {state}" for url, state in self.breaker_states().items())
        return (
            f"no endpoint of backend {self.name!r} accepts calls now because every circuit breaker is open "
            f"or running its trial call ({states}). Check that the servers are up; each breaker lets a "
            "trial call through after breaker_open_s"
        )
