"""Runtime configuration in NATS JetStream key-value: seeding only when absent, watching, invalid values."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from structlog.testing import capture_logs

from shared.embedded.infrastructure import free_port, start_nats
from shared.runtime_config import KeyWatch, WatchedValue, ensure_bucket, seed_key, seed_key_from_file

pytestmark = pytest.mark.nats

HOST = "127.0.0.1"
# A watch delivers a change within milliseconds; the limit only stops a broken watch from hanging the test.
DELIVERY_TIMEOUT_S = 5.0
# nats-py's ordered consumer notices a restarted server after two missed idle
# heartbeats of 5 s each, then recreates itself.
RECONNECT_DELIVERY_TIMEOUT_S = 30.0


def parse_limit(_key: str, data: bytes) -> int:
    """Parse `{"limit": N}` with a positive N; raise ValueError otherwise."""
    value = json.loads(data)
    if not isinstance(value, dict) or not isinstance(value.get("limit"), int) or value["limit"] < 1:
        raise ValueError(f'expected {{"limit": <positive integer>}}, got {data!r}')
    return value["limit"]


async def eventually(condition, timeout_s: float = DELIVERY_TIMEOUT_S) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NatsClient]:
    connection = await nats.connect(nats_url)
    yield connection
    await connection.close()


@pytest.fixture
async def kv(client: NatsClient) -> KeyValue:
    return await ensure_bucket(client.jetstream(), f"test_{uuid.uuid4().hex[:12]}", "test bucket")


async def test_seed_writes_absent_key(kv: KeyValue) -> None:
    written = await seed_key(kv, "limits", b'{"limit": 1}')

    assert written is True
    assert (await kv.get("limits")).value == b'{"limit": 1}'


async def test_seed_keeps_existing_value(kv: KeyValue) -> None:
    await kv.put("limits", b'{"limit": 7}')

    written = await seed_key(kv, "limits", b'{"limit": 1}')

    assert written is False
    assert (await kv.get("limits")).value == b'{"limit": 7}'


async def test_concurrent_seeds_write_once(kv: KeyValue) -> None:
    results = await asyncio.gather(*(seed_key(kv, "limits", f'{{"limit": {n}}}'.encode()) for n in range(1, 6)))

    assert sorted(results) == [False, False, False, False, True]
    assert len(await kv.history("limits")) == 1


async def test_ensure_bucket_opens_existing(client: NatsClient, kv: KeyValue) -> None:
    await kv.put("limits", b'{"limit": 3}')
    bucket = (await kv.status()).bucket

    again = await ensure_bucket(client.jetstream(), bucket, "test bucket")

    assert (await again.get("limits")).value == b'{"limit": 3}'


async def test_seed_from_invalid_file_writes_nothing(kv: KeyValue, tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text('{"limit": 0}')

    with pytest.raises(ValueError, match="positive integer"):
        await seed_key_from_file(kv, "limits", path, parse_limit)

    with pytest.raises(KeyNotFoundError):
        await kv.get("limits")


async def test_seed_from_valid_file(kv: KeyValue, tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text('{"limit": 4}')

    written = await seed_key_from_file(kv, "limits", path, parse_limit)

    assert written is True
    assert (await kv.get("limits")).value == b'{"limit": 4}'


async def test_watch_loads_current_values_before_start_returns(kv: KeyValue) -> None:
    await kv.put("tenants.acme", b'{"limit": 1}')
    await kv.put("tenants.globex", b'{"limit": 2}')
    seen: dict[str, int] = {}
    watch = KeyWatch(kv, "tenants.>", parse_limit, seen.__setitem__)

    await watch.start()
    try:
        assert seen == {"tenants.acme": 1, "tenants.globex": 2}
    finally:
        await watch.stop()


class _LateValuesWatcher:
    """A nats-py watcher that sends its end-of-initial-values marker before the values, as a race can.

    nats-py sends the marker when the server reports no pending values, which
    it can do while the values it already sent are still in flight.
    """

    def __init__(self, entries: list[KeyValue.Entry]) -> None:
        self._items: list[KeyValue.Entry | None] = [None, *entries]
        self._delivered = len(entries)
        self._sub = self

    async def consumer_info(self) -> SimpleNamespace:
        return SimpleNamespace(delivered=SimpleNamespace(consumer_seq=self._delivered))

    def __aiter__(self) -> _LateValuesWatcher:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        if not self._items:
            await asyncio.Event().wait()
        await asyncio.sleep(0.01)
        return self._items.pop(0)

    async def stop(self) -> None:
        return None


async def test_watch_start_waits_for_late_values() -> None:
    entries = [
        KeyValue.Entry(
            bucket="b",
            key=f"tenants.{name}",
            value=f'{{"limit": {limit}}}'.encode(),
            revision=limit,
            delta=2 - limit,
            created=None,
            operation=None,
        )
        for name, limit in (("acme", 1), ("globex", 2))
    ]
    watcher = _LateValuesWatcher(entries)
    kv = SimpleNamespace(watch=lambda _keys: asyncio.sleep(0, result=watcher))
    seen: dict[str, int] = {}
    watch = KeyWatch(kv, "tenants.>", parse_limit, seen.__setitem__)

    await watch.start()
    try:
        assert seen == {"tenants.acme": 1, "tenants.globex": 2}
    finally:
        await watch.stop()


async def test_watch_start_on_empty_bucket(kv: KeyValue) -> None:
    seen: dict[str, int] = {}
    watch = KeyWatch(kv, ">", parse_limit, seen.__setitem__)

    await watch.start()
    await watch.stop()

    assert seen == {}


async def test_watch_delivers_update(kv: KeyValue) -> None:
    await kv.put("tenants.acme", b'{"limit": 1}')
    seen: dict[str, int] = {}
    watch = KeyWatch(kv, "tenants.>", parse_limit, seen.__setitem__)
    await watch.start()
    try:
        await kv.put("tenants.acme", b'{"limit": 5}')
        await kv.put("tenants.initech", b'{"limit": 9}')

        delivered = await eventually(lambda: seen == {"tenants.acme": 5, "tenants.initech": 9})
    finally:
        await watch.stop()

    assert delivered, seen


async def test_watch_ignores_keys_outside_prefix(kv: KeyValue) -> None:
    seen: dict[str, int] = {}
    watch = KeyWatch(kv, "tenants.>", parse_limit, seen.__setitem__)
    await watch.start()
    try:
        await kv.put("other", b'{"limit": 3}')
        await kv.put("tenants.acme", b'{"limit": 1}')
        await eventually(lambda: "tenants.acme" in seen)
    finally:
        await watch.stop()

    assert seen == {"tenants.acme": 1}


async def test_watch_reports_deleted_key(kv: KeyValue) -> None:
    await kv.put("tenants.acme", b'{"limit": 1}')
    deleted: list[str] = []
    watch = KeyWatch(kv, "tenants.>", parse_limit, lambda _key, _value: None, deleted.append)
    await watch.start()
    try:
        await kv.delete("tenants.acme")

        delivered = await eventually(lambda: deleted == ["tenants.acme"])
    finally:
        await watch.stop()

    assert delivered, deleted


async def test_invalid_value_keeps_previous(kv: KeyValue) -> None:
    await kv.put("limits", b'{"limit": 2}')
    value = WatchedValue(kv, "limits", parse_limit)
    await value.start()
    try:
        with capture_logs() as logs:
            await kv.put("limits", b'{"limit": -1}')
            logged = await eventually(lambda: any(entry["event"] == "runtime_config_invalid" for entry in logs))
    finally:
        await value.stop()

    assert logged
    assert value.current == 2
    [entry] = [entry for entry in logs if entry["event"] == "runtime_config_invalid"]
    assert entry["key"] == "limits"
    assert entry["log_level"] == "error"
    assert "positive integer" in entry["error"]


async def test_valid_value_after_invalid_applies(kv: KeyValue) -> None:
    await kv.put("limits", b'{"limit": 2}')
    value = WatchedValue(kv, "limits", parse_limit)
    await value.start()
    try:
        await kv.put("limits", b"not json")
        await kv.put("limits", b'{"limit": 8}')

        delivered = await eventually(lambda: value.current == 8)
    finally:
        await value.stop()

    assert delivered


async def put_from_new_client(url: str, bucket: str, key: str, value: bytes) -> None:
    """Write as another process would, retrying while JetStream recovers its streams after the restart."""
    writer = await nats.connect(url)
    try:
        kv = await writer.jetstream().key_value(bucket)
        for _attempt in range(50):
            try:
                await kv.put(key, value)
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                await asyncio.sleep(0.2)
        raise AssertionError(f"JetStream did not accept a write to {bucket} after the restart")
    finally:
        await writer.close()


async def test_watch_resumes_after_nats_restart(tmp_path: Path) -> None:
    """A change written after the server restarted still arrives, without restarting the watch."""
    port = free_port()
    server = start_nats(HOST, port, tmp_path, tmp_path / "logs")
    connection = await nats.connect(f"nats://{HOST}:{port}", max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        kv = await ensure_bucket(connection.jetstream(), "restart_test", "test bucket")
        await kv.put("limits", b'{"limit": 1}')
        value = WatchedValue(kv, "limits", parse_limit)
        await value.start()

        server.stop()
        server = start_nats(HOST, port, tmp_path, tmp_path / "logs")
        await put_from_new_client(f"nats://{HOST}:{port}", "restart_test", "limits", b'{"limit": 6}')
        delivered = await eventually(lambda: value.current == 6, RECONNECT_DELIVERY_TIMEOUT_S)
        await value.stop()
    finally:
        await connection.close()
        server.stop()

    assert delivered
