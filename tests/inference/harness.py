"""Running the inference service in the test process with a backends file written for the test, and reading its chunks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats.errors
from faststream import TestApp
from nats.js import JetStreamContext

from services.inference.app import make_app
from shared.embedded.infrastructure import free_port
from shared.events import AssignedPayload, ChatMessage, Envelope, EventType, RequestSpec, VariantSpec, decode_envelope
from shared.settings import Settings
from shared.subjects import CHUNKS_STREAM, MODERATION_CONSUMER
from tests.support.envelopes import new_request_envelope

HOST = "127.0.0.1"
TENANT = "acme"
PROMPT = "Good morrow, my lord."


def assigned_envelope(
    variant: VariantSpec,
    *,
    prompt: str = PROMPT,
    tenant: str = TENANT,
    deadline_in_s: float | None = 120.0,
    user_id: str | None = None,
    experiment_key: str | None = None,
    hash_value: float | None = None,
) -> Envelope:
    """Build the `request.assigned` event of a new one-message chat request served by `variant`.

    With `user_id` the request is hashed on the user, as a sticky experiment
    does; without it, on the request id.
    """
    request = RequestSpec(messages=[ChatMessage(role="user", content=prompt)], user_id=user_id)
    payload = AssignedPayload(
        request=request,
        experiment_key=experiment_key,
        variant=variant,
        hash_value=hash_value,
        hash_attribute="user_id" if user_id else "request_id",
    )
    return new_request_envelope(EventType.ASSIGNED, payload, tenant=tenant, deadline_in_s=deadline_in_s)


def write_backends(directory: Path, embedded_url: str, scripted_url: str) -> Path:
    """Write a backends file: `embedded`, `scripted`, and `unreachable` at a port with no listener."""
    path = directory / "backends.yaml"
    path.write_text(
        "backends:\n"
        f"  embedded: {{kind: tgi, url: '{embedded_url}', first_token_timeout_s: 60}}\n"
        f"  scripted: {{kind: tgi, url: '{scripted_url}', token_timeout_s: 2}}\n"
        f"  unreachable: {{kind: tgi, url: 'http://{HOST}:{free_port()}', connect_timeout_s: 1}}\n",
        encoding="utf-8",
    )
    return path


@asynccontextmanager
async def running_inference(
    bus_url: str, redis_url: str, backends_file: Path, metrics_port: int = 0
) -> AsyncIterator[None]:
    """Run the inference service in this process until the block ends, with `/metrics` on `metrics_port` unless it is 0."""
    settings = Settings(
        nats_url=bus_url, redis_url=redis_url, backends_file=backends_file, inference_metrics_port=metrics_port
    )
    async with TestApp(make_app(settings)):
        yield


async def read_chunk_messages(jetstream: JetStreamContext, request_id: str, wait_s: float) -> list[Envelope]:
    """Read the request's CHUNKS messages through the moderation consumer, up to and including generation.end.

    Acks every message it reads, the other requests' ones included. Raises
    `AssertionError` when no generation.end arrives within `wait_s` seconds.
    """
    subscription = await jetstream.pull_subscribe_bind(MODERATION_CONSUMER.durable, stream=CHUNKS_STREAM)
    found: list[Envelope] = []
    deadline = time.monotonic() + wait_s
    try:
        while not found or found[-1].type is not EventType.END:
            if time.monotonic() > deadline:
                raise AssertionError(f"no generation.end for request {request_id} within {wait_s} s")
            try:
                batch = await subscription.fetch(64, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                await msg.ack()
                envelope = decode_envelope(msg.data)
                if envelope.request_id == request_id:
                    found.append(envelope)
    finally:
        await subscription.unsubscribe()
    return found
