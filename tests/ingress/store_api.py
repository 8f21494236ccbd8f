"""The telemetry store API served from a store the test fills, and admin keys, for the ingress's analytics and report tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import nats
from nats.aio.msg import Msg

from services.telemetry.query_api import REPLY_HEADROOM_BYTES, StoreQueryHandler
from services.telemetry.store import EventStore
from shared.api_key_store import create_api_key, open_api_key_bucket
from shared.subjects import STORE_QUERY_SUBJECT, STORE_QUEUE_GROUP

from tests.ingress.support import bearer

# A key written to the bucket reaches the ingress's watch within milliseconds;
# the limit only stops a broken watch from hanging the test.
KEY_WATCH_WAIT_S = 10.0


@asynccontextmanager
async def serving_store_api(nats_url: str, store: EventStore, max_result_rows: int) -> AsyncIterator[None]:
    """Serve store API requests on `nats_url` from `store` until the block ends.

    It runs the telemetry service's query handler without its event puller,
    so the events that other ingress tests publish stay out of the store.
    """
    client = await nats.connect(nats_url)
    handler = StoreQueryHandler(store, client.max_payload - REPLY_HEADROOM_BYTES, analytics_max_result_rows=max_result_rows)

    async def respond(message: Msg) -> None:
        await message.respond(await handler.reply(message.data))

    subscription = await client.subscribe(STORE_QUERY_SUBJECT, queue=STORE_QUEUE_GROUP, cb=respond)
    # The ingress's request gets "no responders" until the server has the subscription.
    await client.flush()
    try:
        yield
    finally:
        await subscription.unsubscribe()
        await client.close()


async def new_admin_key(http: httpx.AsyncClient, nats_url: str, name: str, probe_path: str) -> str:
    """Create an admin key of tenant "operations" and return it once the ingress accepts it on `probe_path`."""
    connection = await nats.connect(nats_url)
    try:
        kv = await open_api_key_bucket(connection.jetstream())
        created = await create_api_key(kv, "operations", name=name, admin=True)
    finally:
        await connection.close()
    deadline = asyncio.get_running_loop().time() + KEY_WATCH_WAIT_S
    while (await http.get(probe_path, headers=bearer(created.plain_key))).status_code == 401:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the ingress did not accept the new admin key within {KEY_WATCH_WAIT_S} s")
        await asyncio.sleep(0.05)
    return created.plain_key
