"""Choosing an endpoint per try: breakers, fewest in flight, the per-endpoint bound, and outcomes fed back.

The pool builds real TGI clients, which open no connection until a stream
starts; these tests never start one.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from services.inference.backends import Backend, BackendRejected, BackendUnavailable, NoEndpointAvailable
from services.inference.circuit_breaker import BreakerState
from services.inference.endpoint_pool import Endpoint, EndpointPool
from services.inference.tgi import TgiBackend
from shared.experiments import BackendConfig
from tests.inference.manual_clock import ManualClock

FIRST = "http://127.0.0.1:9001"
SECOND = "http://127.0.0.1:9002"
OPEN_S = 10.0
# How long a test lets a waiting lease run to show that it is still waiting.
PENDING_CHECK_S = 0.05


def _pool(
    urls: list[str] | None = None, max_in_flight_per_endpoint: int = 4, threshold: int = 1, clock: ManualClock | None = None
) -> EndpointPool:
    config = BackendConfig(
        kind="tgi",
        endpoints=urls or [FIRST, SECOND],
        max_in_flight_per_endpoint=max_in_flight_per_endpoint,
        breaker_failure_threshold=threshold,
        breaker_open_s=OPEN_S,
    )
    return EndpointPool("pool", config, TgiBackend, clock or ManualClock())


async def _hold(stack: AsyncExitStack, pool: EndpointPool) -> Endpoint:
    """Lease an endpoint until `stack` closes."""
    return await stack.enter_async_context(pool.lease())


async def _lease_once(pool: EndpointPool) -> str:
    """Lease an endpoint, end the lease at once, and return the endpoint's URL."""
    async with pool.lease() as endpoint:
        return endpoint.url


async def _fail_once(pool: EndpointPool, error: Exception) -> str:
    """Lease an endpoint, raise `error` inside the lease, and return the endpoint's URL."""
    url = ""
    with pytest.raises(type(error)):
        async with pool.lease() as endpoint:
            url = endpoint.url
            raise error
    return url


def test_one_client_per_endpoint() -> None:
    built: list[tuple[str, BackendConfig]] = []

    def make_backend(name: str, config: BackendConfig) -> Backend:
        built.append((name, config))
        return TgiBackend(name, config)

    config = BackendConfig(kind="tgi", endpoints=[FIRST, SECOND], token_timeout_s=7)
    pool = EndpointPool("pool", config, make_backend)

    assert [endpoint.url for endpoint in pool.endpoints] == [FIRST, SECOND]
    assert [(name, config.endpoint_urls) for name, config in built] == [("pool", [FIRST]), ("pool", [SECOND])]
    assert [config.token_timeout_s for _, config in built] == [7, 7]
    assert pool.breaker_states() == {FIRST: BreakerState.CLOSED, SECOND: BreakerState.CLOSED}


async def test_tie_goes_to_file_order() -> None:
    async with _pool().lease() as endpoint:
        assert endpoint.url == FIRST


async def test_fewest_in_flight_chosen() -> None:
    pool = _pool()
    async with AsyncExitStack() as stack:
        first = await _hold(stack, pool)
        second = await _hold(stack, pool)
        third = await _hold(stack, pool)

        assert [first.url, second.url, third.url] == [FIRST, SECOND, FIRST]
        assert [endpoint.in_flight for endpoint in pool.endpoints] == [2, 1]

    assert [endpoint.in_flight for endpoint in pool.endpoints] == [0, 0]


async def test_avoided_endpoint_skipped() -> None:
    async with _pool().lease(avoid={FIRST}) as endpoint:
        assert endpoint.url == SECOND


async def test_avoided_endpoint_used_when_alone() -> None:
    pool = _pool()
    await _fail_once(pool, BackendUnavailable("down"))

    async with pool.lease(avoid={SECOND}) as endpoint:
        assert endpoint.url == SECOND


async def test_open_endpoint_skipped() -> None:
    pool = _pool()
    failed_url = await _fail_once(pool, BackendUnavailable("down"))

    async with pool.lease() as endpoint:
        assert failed_url == FIRST
        assert endpoint.url == SECOND
    assert pool.breaker_states() == {FIRST: BreakerState.OPEN, SECOND: BreakerState.CLOSED}


async def test_all_open_fails_fast() -> None:
    pool = _pool()
    await _fail_once(pool, BackendUnavailable("down"))
    await _fail_once(pool, BackendUnavailable("down"))

    with pytest.raises(NoEndpointAvailable) as caught:
        async with pool.lease():
            pass

    assert caught.value.error_code == "no_endpoint_available"
    assert caught.value.retryable is False
    assert f"{FIRST}: open" in str(caught.value)
    assert "backend 'pool'" in str(caught.value)


async def test_trial_after_open_s() -> None:
    clock = ManualClock()
    pool = _pool([FIRST], clock=clock)
    await _fail_once(pool, BackendUnavailable("down"))
    clock.advance(OPEN_S)

    async with pool.lease() as endpoint:
        assert pool.breaker_states() == {FIRST: BreakerState.HALF_OPEN}
        # The trial call is the only one let through.
        with pytest.raises(NoEndpointAvailable):
            async with pool.lease():
                pass

    assert endpoint.url == FIRST
    assert pool.breaker_states() == {FIRST: BreakerState.CLOSED}


async def test_retryable_error_counts_failure() -> None:
    pool = _pool(threshold=2)

    await _fail_once(pool, BackendUnavailable("down"))

    assert pool.endpoints[0].breaker.consecutive_failures == 1


async def test_rejected_request_counts_success() -> None:
    pool = _pool(threshold=2)
    await _fail_once(pool, BackendUnavailable("down"))
    # Both endpoints have none in flight, so the first is chosen again.
    await _fail_once(pool, BackendRejected("HTTP 422"))

    assert pool.endpoints[0].breaker.consecutive_failures == 0
    assert pool.breaker_states()[FIRST] is BreakerState.CLOSED


async def test_cancelled_try_leaves_breaker() -> None:
    pool = _pool(threshold=2)
    await _fail_once(pool, BackendUnavailable("down"))

    await _fail_once(pool, asyncio.CancelledError())

    assert pool.endpoints[0].breaker.consecutive_failures == 1
    assert pool.endpoints[0].in_flight == 0


async def test_full_pool_waits_for_slot() -> None:
    pool = _pool(max_in_flight_per_endpoint=1)
    async with AsyncExitStack() as first_stack, AsyncExitStack() as second_stack:
        await _hold(first_stack, pool)
        await _hold(second_stack, pool)
        waiting = asyncio.create_task(_lease_once(pool))
        await asyncio.sleep(PENDING_CHECK_S)
        assert not waiting.done()

        await second_stack.aclose()
        url = await asyncio.wait_for(waiting, timeout=1.0)

        assert url == SECOND
        assert [endpoint.in_flight for endpoint in pool.endpoints] == [1, 0]


async def test_waiting_try_fails_when_last_breaker_opens() -> None:
    pool = _pool([FIRST], max_in_flight_per_endpoint=1)
    with pytest.raises(BackendUnavailable):
        async with pool.lease():
            waiting = asyncio.create_task(_lease_once(pool))
            await asyncio.sleep(PENDING_CHECK_S)
            assert not waiting.done()
            raise BackendUnavailable("down")

    with pytest.raises(NoEndpointAvailable):
        await asyncio.wait_for(waiting, timeout=1.0)
