"""Writing the configuration bucket as `sluice config set` does, and waiting until a running service applied a revision."""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext

from shared.config_store import open_config_bucket

# A watch delivers a change within milliseconds; the limit only stops a broken watch from hanging a test.
APPLY_WAIT_S = 10.0
POLL_INTERVAL_S = 0.02


async def put_config(jetstream: JetStreamContext, key: str, text: str) -> int:
    """Store `text` under `key` in the configuration bucket and return the new revision."""
    kv = await open_config_bucket(jetstream)
    return await kv.put(key, text.encode())


async def wait_for_revision(logs: list[dict], event: str, key: str, revision: int, wait_s: float = APPLY_WAIT_S) -> bool:
    """Poll `structlog.testing.capture_logs` entries until `event` (applied or invalid) names `key` at `revision`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if any(_matches(entry, event, key, revision) for entry in logs):
            return True
        await asyncio.sleep(POLL_INTERVAL_S)
    return False


def _matches(entry: dict, event: str, key: str, revision: int) -> bool:
    return entry["event"] == event and entry.get("key") == key and entry.get("revision") == revision
