"""Queue positions on a real redis-server: waiting, admission, the projector's late add, and tombstone trimming."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from shared.events import AssignedPayload, ChatMessage, Envelope, EventType, FirstTokenPayload, RequestSpec, VariantSpec
from shared.queue_positions import TOMBSTONE_MAX_AGE_S, QueuePositions, queue_key
from tests.support.envelopes import new_request_envelope

pytestmark = pytest.mark.redis

TTL_S = 60
START_S = 1_000_000.0


class ManualClock:
    def __init__(self) -> None:
        self.now_s = START_S

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    connection = redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def positions(client: redis.Redis, clock: ManualClock) -> QueuePositions:
    return QueuePositions(client, TTL_S, clock)


@pytest.fixture
def backend() -> str:
    """A pool name of its own, so tests never share a queue set."""
    return f"pool-{uuid.uuid4().hex[:8]}"


def _assigned(backend: str, tenant: str = "acme") -> Envelope:
    request = RequestSpec(messages=[ChatMessage(role="user", content="Good morrow.")])
    payload = AssignedPayload(
        request=request, experiment_key=None, variant=VariantSpec(key="control", backend=backend), hash_attribute="request_id"
    )
    return new_request_envelope(EventType.ASSIGNED, payload, tenant=tenant, deadline_in_s=None)


def _first_token(assigned: Envelope, backend: str) -> Envelope:
    payload = FirstTokenPayload(variant_key="control", backend=backend, attempt=1, backend_ttft_ms=5.0)
    return assigned.follow_up(EventType.FIRST_TOKEN, payload, attempt=1)


async def _project(client: redis.Redis, positions: QueuePositions, envelope: Envelope, stream_sequence: int) -> None:
    async with client.pipeline(transaction=False) as pipe:
        positions.queue_event(pipe, envelope, stream_sequence)
        await pipe.execute()


async def _positions_of(positions: QueuePositions, backend: str, envelopes: list[Envelope]) -> list[int | None]:
    return [await positions.waiting_ahead(backend, envelope.tenant, envelope.request_id) for envelope in envelopes]


async def test_waiting_requests_count_those_ahead(client: redis.Redis, positions: QueuePositions, backend: str) -> None:
    queued = [_assigned(backend) for _ in range(3)]

    for sequence, envelope in enumerate(queued, start=10):
        await _project(client, positions, envelope, sequence)

    assert await _positions_of(positions, backend, queued) == [0, 1, 2]


async def test_other_tenant_and_pool_separate(client: redis.Redis, positions: QueuePositions, backend: str) -> None:
    acme = [_assigned(backend), _assigned(backend)]
    globex = _assigned(backend, tenant="globex")
    elsewhere = _assigned(f"{backend}-other")

    await _project(client, positions, acme[0], 1)
    await _project(client, positions, globex, 2)
    await _project(client, positions, elsewhere, 3)
    await _project(client, positions, acme[1], 4)

    assert await _positions_of(positions, backend, acme) == [0, 1]
    assert await positions.waiting_ahead(backend, "globex", globex.request_id) == 0
    assert await positions.waiting_ahead(f"{backend}-other", "acme", elsewhere.request_id) == 0


async def test_admission_moves_others_up(client: redis.Redis, positions: QueuePositions, backend: str) -> None:
    queued = [_assigned(backend) for _ in range(3)]
    for sequence, envelope in enumerate(queued, start=1):
        await _project(client, positions, envelope, sequence)

    await positions.mark_admitted(backend, "acme", queued[0].request_id)

    assert await _positions_of(positions, backend, queued) == [None, 0, 1]


async def test_late_projection_keeps_admitted_out(client: redis.Redis, positions: QueuePositions, backend: str) -> None:
    admitted, waiting = _assigned(backend), _assigned(backend)

    # The inference service admitted the request before the projector saw its request.assigned.
    await positions.mark_admitted(backend, "acme", admitted.request_id)
    await _project(client, positions, admitted, 1)
    await _project(client, positions, waiting, 2)

    assert await _positions_of(positions, backend, [admitted, waiting]) == [None, 0]


async def test_first_token_admits(client: redis.Redis, positions: QueuePositions, backend: str) -> None:
    first, second = _assigned(backend), _assigned(backend)
    await _project(client, positions, first, 1)
    await _project(client, positions, second, 2)

    await _project(client, positions, _first_token(first, backend), 3)

    assert await _positions_of(positions, backend, [first, second]) == [None, 0]


async def test_unknown_request_has_no_position(positions: QueuePositions, backend: str) -> None:
    assert await positions.waiting_ahead(backend, "acme", "no-such-request") is None


async def test_old_tombstones_trimmed(
    client: redis.Redis, positions: QueuePositions, clock: ManualClock, backend: str
) -> None:
    old, recent, waiting = _assigned(backend), _assigned(backend), _assigned(backend)
    await positions.mark_admitted(backend, "acme", old.request_id)
    clock.now_s += TOMBSTONE_MAX_AGE_S + 1
    await _project(client, positions, waiting, 5)

    await positions.mark_admitted(backend, "acme", recent.request_id)

    members = {member.decode() for member in await client.zrange(queue_key(backend, "acme"), 0, -1)}
    assert members == {recent.request_id, waiting.request_id}
    assert await positions.waiting_ahead(backend, "acme", waiting.request_id) == 0


async def test_writes_set_ttl(client: redis.Redis, positions: QueuePositions, backend: str) -> None:
    await _project(client, positions, _assigned(backend), 1)

    ttl_s = await client.ttl(queue_key(backend, "acme"))

    assert 0 < ttl_s <= TTL_S
