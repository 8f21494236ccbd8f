"""The test output policy, CHUNKS message builders, and readers of what moderation wrote: release log entries and events."""

from __future__ import annotations

import uuid

from nats.js import JetStreamContext

from shared.events import ChunkPayload, EndPayload, Envelope, EventType, Usage, derive_event_id, utc_now
from shared.release_log import ReleasedMessage, ReleaseLog
from tests.support.jetstream import published_events

TENANT = "acme"
WAIT_S = 30.0

# The longest banned substring, "DAN Mode enabled", has 16 characters and the
# Regex allows 22, so moderation holds back 22.
OUTPUT_POLICY = {
    "input": [],
    "output": [
        {"type": "BanSubstrings", "options": {"substrings": ["DAN Mode enabled", "xyzzy"]}},
        {"type": "Regex", "name": "AwsAccessKey", "max_match_chars": 22, "options": {"patterns": ["\\bAKIA[0-9A-Z]{16}\\b"]}},
        {"type": "NoRefusalLight", "action": "flag"},
    ],
}
HOLDBACK_CHARS = 22


def new_request_id() -> str:
    return str(uuid.uuid4())


def _envelope(request_id: str, event_type: EventType, payload: ChunkPayload | EndPayload, attempt: int, seq: int = 0) -> Envelope:
    return Envelope(
        event_id=derive_event_id(TENANT, request_id, event_type, attempt, seq),
        type=event_type,
        request_id=request_id,
        tenant=TENANT,
        ts=utc_now(),
        payload=payload.model_dump(mode="json"),
    )


def chunk(request_id: str, seq: int, text: str, attempt: int = 1) -> tuple[Envelope, ChunkPayload]:
    payload = ChunkPayload(attempt=attempt, seq=seq, text=text)
    return _envelope(request_id, EventType.CHUNK, payload, attempt, seq), payload


def end(
    request_id: str,
    attempt: int = 1,
    *,
    finish_reason: str = "length",
    completion_tokens: int = 12,
    error_code: str | None = None,
) -> tuple[Envelope, EndPayload]:
    payload = EndPayload(
        attempt=attempt,
        finish_reason=finish_reason,
        usage=Usage(prompt_tokens=5, completion_tokens=completion_tokens),
        error_code=error_code,
        error_message=f"backend said {error_code}" if error_code else None,
    )
    return _envelope(request_id, EventType.END, payload, attempt), payload


async def release_entries(release_log: ReleaseLog, request_id: str) -> list[ReleasedMessage]:
    return await release_log.read(TENANT, request_id, after_entry_id="0-0", block_ms=None)


async def released_chunks(release_log: ReleaseLog, request_id: str) -> list[dict[str, object]]:
    return [entry.data for entry in await release_entries(release_log, request_id) if not entry.is_final]


async def final_entry(release_log: ReleaseLog, request_id: str) -> dict[str, object] | None:
    finals = [entry.data for entry in await release_entries(release_log, request_id) if entry.is_final]
    return finals[0] if finals else None


async def events_of(jetstream: JetStreamContext, request_id: str) -> dict[EventType, list[Envelope]]:
    """Return the request's EVENTS messages published so far, by type."""
    found: dict[EventType, list[Envelope]] = {}
    for envelope in await published_events(jetstream):
        if envelope.request_id == request_id:
            found.setdefault(envelope.type, []).append(envelope)
    return found

# The test policy plus a PII entry that redacts email addresses, and a
# tenant whose output list has only that entry.
REDACTING_TENANT = "globex"
PII_ENTRY = {"type": "PII", "options": {"entities": {"EMAIL": "redact", "PHONE": "allow"}}}
REDACTING_POLICY = {
    **OUTPUT_POLICY,
    "tenants": {REDACTING_TENANT: {"output": [PII_ENTRY]}},
}
