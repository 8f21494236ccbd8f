"""The WebSocket stream of a running ingress, fed by a real release log in Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import redis.asyncio as redis
import websockets
from websockets.asyncio.client import ClientConnection
from structlog.testing import capture_logs
from websockets.exceptions import ConnectionClosed

from shared.release_log import ReleaseLog

from services.ingress.state_store import RequestStateStore, RequestStatus, StateUpdate
from services.ingress.streaming import CLOSE_NORMAL, CLOSE_NOT_FOUND, CLOSE_UNAUTHORIZED
from tests.ingress.support import ApiKeys, bearer, wait_until

pytestmark = [pytest.mark.nats, pytest.mark.redis]

TTL_S = 600
FINAL = {"status": "completed", "finish_reason": "length"}
# A stream that sends nothing for this long has failed the test. It exceeds
# the time the streamer delays a final message for a lagging status.
RECEIVE_TIMEOUT_S = 8.0
# Long enough for the streamer to have sent a final message it should hold back, short of its wait bound.
HELD_FINAL_CHECK_S = 0.5


@pytest.fixture
def release_log(redis_client: redis.Redis) -> ReleaseLog:
    return ReleaseLog(redis_client, TTL_S)


@pytest.fixture
def state_store(redis_client: redis.Redis) -> RequestStateStore:
    return RequestStateStore(redis_client, TTL_S)


@pytest.fixture
async def request_id(state_store: RequestStateStore) -> str:
    """A generating request of tenant acme."""
    request_id = uuid.uuid4().hex
    await state_store.apply("acme", request_id, StateUpdate(RequestStatus.GENERATING))
    return request_id


def _stream_url(ingress: str, request_id: str, offset: int | None = None) -> str:
    url = f"{ingress.replace('http://', 'ws://')}/v1/requests/{request_id}/stream"
    return f"{url}?offset={offset}" if offset is not None else url


async def _receive_all(connection: ClientConnection) -> list[dict[str, Any]]:
    """Return every message until the server closes the connection."""
    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(connection.recv(), RECEIVE_TIMEOUT_S)))
    except ConnectionClosed:
        return messages


async def _append_chunks(release_log: ReleaseLog, request_id: str, texts: list[str]) -> None:
    for seq, text in enumerate(texts):
        await release_log.append_chunk("acme", request_id, seq, text)


async def _finish(release_log: ReleaseLog, state_store: RequestStateStore, request_id: str) -> None:
    """Close the log and record the terminal status, as moderation and the projector do."""
    await release_log.append_final("acme", request_id, FINAL)
    await state_store.apply("acme", request_id, StateUpdate(RequestStatus.COMPLETED))


async def test_late_client_gets_everything(
    ingress: str, api_keys: ApiKeys, release_log: ReleaseLog, state_store: RequestStateStore, request_id: str
) -> None:
    await _append_chunks(release_log, request_id, ["The ", "sea, ", "the sea."])
    await _finish(release_log, state_store, request_id)

    async with websockets.connect(_stream_url(ingress, request_id), additional_headers=bearer(api_keys.acme)) as connection:
        messages = await _receive_all(connection)

    assert messages == [
        {"type": "chunk", "seq": 0, "text": "The "},
        {"type": "chunk", "seq": 1, "text": "sea, "},
        {"type": "chunk", "seq": 2, "text": "the sea."},
        {"type": "final", **FINAL},
    ]
    assert connection.close_code == CLOSE_NORMAL


async def test_live_client_gets_chunks_as_appended(
    ingress: str, api_keys: ApiKeys, release_log: ReleaseLog, state_store: RequestStateStore, request_id: str
) -> None:
    async with websockets.connect(_stream_url(ingress, request_id), additional_headers=bearer(api_keys.acme)) as connection:
        await release_log.append_chunk("acme", request_id, 0, "first")
        first = json.loads(await asyncio.wait_for(connection.recv(), RECEIVE_TIMEOUT_S))
        await release_log.append_chunk("acme", request_id, 1, "second")
        await _finish(release_log, state_store, request_id)
        rest = await _receive_all(connection)

    assert first == {"type": "chunk", "seq": 0, "text": "first"}
    assert [message["type"] for message in rest] == ["chunk", "final"]
    assert rest[0]["text"] == "second"


async def test_offset_skips_earlier_chunks(
    ingress: str, api_keys: ApiKeys, release_log: ReleaseLog, state_store: RequestStateStore, request_id: str
) -> None:
    await _append_chunks(release_log, request_id, ["zero", "one", "two"])
    await _finish(release_log, state_store, request_id)

    url = _stream_url(ingress, request_id, offset=2)
    async with websockets.connect(url, additional_headers=bearer(api_keys.acme)) as connection:
        messages = await _receive_all(connection)

    assert messages == [{"type": "chunk", "seq": 2, "text": "two"}, {"type": "final", **FINAL}]


async def test_reconnect_resumes_after_last_seen(
    ingress: str, api_keys: ApiKeys, release_log: ReleaseLog, state_store: RequestStateStore, request_id: str
) -> None:
    await _append_chunks(release_log, request_id, ["zero", "one"])
    async with websockets.connect(_stream_url(ingress, request_id), additional_headers=bearer(api_keys.acme)) as connection:
        seen = [json.loads(await asyncio.wait_for(connection.recv(), RECEIVE_TIMEOUT_S)) for _ in range(2)]
    await release_log.append_chunk("acme", request_id, 2, "two")
    await _finish(release_log, state_store, request_id)

    url = _stream_url(ingress, request_id, offset=seen[-1]["seq"] + 1)
    async with websockets.connect(url, additional_headers=bearer(api_keys.acme)) as connection:
        missed = await _receive_all(connection)

    assert [message.get("seq") for message in missed] == [2, None]


async def test_final_waits_for_terminal_status(
    ingress: str, api_keys: ApiKeys, release_log: ReleaseLog, state_store: RequestStateStore, request_id: str
) -> None:
    await _append_chunks(release_log, request_id, ["zero"])
    await release_log.append_final("acme", request_id, FINAL)

    async with websockets.connect(_stream_url(ingress, request_id), additional_headers=bearer(api_keys.acme)) as connection:
        chunk = json.loads(await asyncio.wait_for(connection.recv(), RECEIVE_TIMEOUT_S))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connection.recv(), HELD_FINAL_CHECK_S)
        await state_store.apply("acme", request_id, StateUpdate(RequestStatus.COMPLETED))
        final = json.loads(await asyncio.wait_for(connection.recv(), RECEIVE_TIMEOUT_S))

    assert chunk["seq"] == 0
    assert final == {"type": "final", **FINAL}


async def test_missing_key_closes_4401(ingress: str, request_id: str) -> None:
    async with websockets.connect(_stream_url(ingress, request_id)) as connection:
        messages = await _receive_all(connection)

    assert messages == []
    assert connection.close_code == CLOSE_UNAUTHORIZED


async def test_wrong_key_closes_4401(ingress: str, request_id: str) -> None:
    async with websockets.connect(_stream_url(ingress, request_id), additional_headers=bearer("sk-sluice-wrong")) as connection:
        await _receive_all(connection)

    assert connection.close_code == CLOSE_UNAUTHORIZED


async def test_unknown_request_closes_4404(ingress: str, api_keys: ApiKeys) -> None:
    url = _stream_url(ingress, uuid.uuid4().hex)
    async with websockets.connect(url, additional_headers=bearer(api_keys.acme)) as connection:
        await _receive_all(connection)

    assert connection.close_code == CLOSE_NOT_FOUND


async def test_other_tenants_request_closes_4404(ingress: str, api_keys: ApiKeys, request_id: str) -> None:
    async with websockets.connect(_stream_url(ingress, request_id), additional_headers=bearer(api_keys.globex)) as connection:
        await _receive_all(connection)

    assert connection.close_code == CLOSE_NOT_FOUND


async def test_disconnect_stops_the_reader(
    ingress: str, api_keys: ApiKeys, release_log: ReleaseLog, request_id: str
) -> None:
    await _append_chunks(release_log, request_id, ["zero"])
    with capture_logs() as logs:
        async with websockets.connect(_stream_url(ingress, request_id), additional_headers=bearer(api_keys.acme)) as connection:
            await asyncio.wait_for(connection.recv(), RECEIVE_TIMEOUT_S)

        async def disconnect_logged() -> bool:
            return any(
                entry["event"] == "stream_client_disconnected" and entry["request_id"] == request_id for entry in logs
            )

        assert await wait_until(disconnect_logged)
    # The request goes on: later chunks are still stored.
    assert await release_log.append_chunk("acme", request_id, 1, "one") is True
