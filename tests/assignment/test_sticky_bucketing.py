"""Sticky bucketing through a running assignment service, with the assignments stored in a real redis-server.

The experiments change through the configuration bucket between requests,
as an operator changes them. Each test uses a tenant of its own, so the
units it stores in Redis are its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis
from faststream import TestApp
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.assignment.app import make_app
from services.assignment.assigner import StickyAssignment
from services.assignment.metrics import AssignmentMetrics
from services.assignment.sticky_store import StickyBucketStore, sticky_key
from shared.config_store import EXPERIMENTS_KEY
from shared.embedded.infrastructure import free_port
from shared.events import AssignedPayload, ChatMessage, EventType, RequestSpec, ScreenedPayload, Verdict
from shared.settings import Settings
from shared.subjects import event_filter
from tests.support.config_bucket import put_config, wait_for_revision
from tests.support.envelopes import new_request_envelope
from tests.support.jetstream import jetstream_client, private_nats, publish_envelope, published_events

pytestmark = [pytest.mark.nats, pytest.mark.redis]

WAIT_S = 20.0
POLL_INTERVAL_S = 0.1
USER_COUNT = 200
EXPERIMENT = """\
default_variant: {{key: default, backend: embedded}}
experiments:
  - key: sticky
    bucket_version: {bucket_version}
    min_bucket_version: {min_bucket_version}
    variants:
      - {{key: control, weight: {control}, backend: embedded}}
      - {{key: treatment, weight: {treatment}, backend: embedded}}
"""


@pytest.fixture(scope="module")
def bus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own, so that changing the experiments here leaves the package's other service alone."""
    with private_nats(tmp_path_factory, "assignment-sticky-nats") as url:
        yield url


@pytest.fixture(scope="module")
async def jetstream(bus_url: str, redis_url: str) -> AsyncIterator[JetStreamContext]:
    async with TestApp(make_app(Settings(nats_url=bus_url, redis_url=redis_url))):
        async with jetstream_client(bus_url) as jetstream:
            yield jetstream


async def use_experiment(
    jetstream: JetStreamContext, control: float, *, bucket_version: int = 0, min_bucket_version: int = 0
) -> None:
    """Store the experiment with these weights and versions, and wait until the service applied it."""
    text = EXPERIMENT.format(
        control=control,
        treatment=round(1.0 - control, 6),
        bucket_version=bucket_version,
        min_bucket_version=min_bucket_version,
    )
    with capture_logs() as logs:
        revision = await put_config(jetstream, EXPERIMENTS_KEY, text)
        assert await wait_for_revision(logs, "runtime_config_applied", EXPERIMENTS_KEY, revision)


async def assign(jetstream: JetStreamContext, tenant: str, users: list[str]) -> dict[str, AssignedPayload]:
    """Publish one screened request per user and return each user's `request.assigned` payload."""
    users_by_request: dict[str, str] = {}
    for user in users:
        request = RequestSpec(messages=[ChatMessage(role="user", content="Good morrow.")], user_id=user)
        payload = ScreenedPayload(request=request, verdict=Verdict.PASSED, scanners=[])
        screened = new_request_envelope(EventType.SCREENED, payload, tenant=tenant, deadline_in_s=60.0)
        users_by_request[screened.request_id] = user
        await publish_envelope(jetstream, screened)

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assigned = {
            users_by_request[envelope.request_id]: envelope.parsed_payload()
            for envelope in await published_events(jetstream, event_filter(EventType.ASSIGNED))
            if envelope.request_id in users_by_request
        }
        if len(assigned) == len(users):
            return assigned
        await asyncio.sleep(POLL_INTERVAL_S)
    raise AssertionError(f"{len(users) - len(assigned)} of {len(users)} requests were not assigned within {WAIT_S} s")


def variants(assigned: dict[str, AssignedPayload]) -> dict[str, str]:
    return {user: payload.variant.key for user, payload in assigned.items()}


def _tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def _users(prefix: str) -> list[str]:
    return [f"{prefix}-{index}" for index in range(USER_COUNT)]


async def test_weight_change_keeps_assigned_units(jetstream: JetStreamContext) -> None:
    tenant, users, newcomers = _tenant(), _users("early"), _users("late")
    await use_experiment(jetstream, control=0.5)
    before = variants(await assign(jetstream, tenant, users))

    await use_experiment(jetstream, control=0.1)
    after = variants(await assign(jetstream, tenant, users))
    new = variants(await assign(jetstream, tenant, newcomers))

    assert after == before
    # 50/50 over 200 units: 3 standard deviations are about 21.
    assert 79 <= sum(variant == "control" for variant in before.values()) <= 121
    # 10/90 over 200 units: 3 standard deviations are about 13.
    assert sum(variant == "control" for variant in new.values()) <= 33


async def test_bucket_version_bump_rehashes(jetstream: JetStreamContext) -> None:
    tenant, users = _tenant(), _users("bumped")
    await use_experiment(jetstream, control=0.5)
    before = variants(await assign(jetstream, tenant, users))

    await use_experiment(jetstream, control=0.1, bucket_version=1)
    after = variants(await assign(jetstream, tenant, users))

    moved_to_treatment = [user for user in users if before[user] == "control" and after[user] == "treatment"]
    # Every unit is hashed again with 10/90, so about 80% of the former control units move.
    assert len(moved_to_treatment) >= 50
    assert sum(variant == "control" for variant in after.values()) <= 33


async def test_min_bucket_version_excludes_old_units(jetstream: JetStreamContext) -> None:
    tenant, users, newcomers = _tenant(), _users("old"), _users("new")
    await use_experiment(jetstream, control=0.5)
    await assign(jetstream, tenant, users)

    await use_experiment(jetstream, control=0.5, bucket_version=1, min_bucket_version=1)
    old = await assign(jetstream, tenant, users)
    new = await assign(jetstream, tenant, newcomers)

    assert {payload.experiment_key for payload in old.values()} == {None}
    assert {payload.variant.key for payload in old.values()} == {"default"}
    assert {payload.experiment_key for payload in new.values()} == {"sticky"}


async def test_request_id_units_not_stored(jetstream: JetStreamContext, redis_url: str) -> None:
    tenant = _tenant()
    await use_experiment(jetstream, control=0.5)

    await assign(jetstream, tenant, [""])

    client = redis.from_url(redis_url)
    try:
        assert await client.keys(f"sluice:sticky-bucket:{tenant}:*") == []
    finally:
        await client.aclose()


async def test_store_renews_ttl(redis_url: str) -> None:
    client = redis.from_url(redis_url, decode_responses=True)
    store = StickyBucketStore(client, ttl_s=3600, metrics=AssignmentMetrics())
    tenant = _tenant()
    try:
        await store.save(tenant, "user_id", "alice", StickyAssignment("sticky__0", "control"))
        await client.expire(sticky_key(tenant, "user_id", "alice"), 10)

        loaded = await store.load(tenant, "user_id", "alice")
        ttl_s = await client.ttl(sticky_key(tenant, "user_id", "alice"))
    finally:
        await client.aclose()

    assert loaded == {"sticky__0": "control"}
    assert 3590 <= ttl_s <= 3600


async def test_store_keeps_first_variant(redis_url: str) -> None:
    client = redis.from_url(redis_url, decode_responses=True)
    store = StickyBucketStore(client, ttl_s=3600, metrics=AssignmentMetrics())
    tenant = _tenant()
    try:
        await store.save(tenant, "user_id", "alice", StickyAssignment("sticky__0", "control"))
        await store.save(tenant, "user_id", "alice", StickyAssignment("sticky__0", "treatment"))
        loaded = await store.load(tenant, "user_id", "alice")
    finally:
        await client.aclose()

    assert loaded == {"sticky__0": "control"}


async def test_redis_down_falls_back_and_counts() -> None:
    # Nothing listens on a fresh free port, so every call fails at once.
    client = redis.from_url(f"redis://127.0.0.1:{free_port()}/0", decode_responses=True, socket_connect_timeout=0.5)
    metrics = AssignmentMetrics()
    store = StickyBucketStore(client, ttl_s=3600, metrics=metrics)
    try:
        with capture_logs() as logs:
            loaded = await store.load("acme", "user_id", "alice")
            await store.save("acme", "user_id", "alice", StickyAssignment("sticky__0", "control"))
    finally:
        await client.aclose()

    assert loaded is None
    assert [entry["operation"] for entry in logs if entry["event"] == "sticky_bucket_unavailable"] == [
        "sticky_load",
        "sticky_save",
    ]
    sample = metrics.registry.get_sample_value("sluice_assignment_redis_errors_total", {"operation": "sticky_load"})
    assert sample == 1
