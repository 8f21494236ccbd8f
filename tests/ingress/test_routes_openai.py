"""The OpenAI-compatible routes of a running ingress, called with the official `openai` client.

No pipeline runs behind this ingress: each test waits for its request's
`request.accepted` on NATS, then writes the release log in Redis as
moderation does, so every outcome (chunks, a blocked prompt, a failure after
output) can be set exactly. The whole pipeline is tested in tests/e2e/.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import redis.asyncio as redis
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from shared.cancellation import REASON_CLIENT_DISCONNECTED, CancelMarks
from shared.events import AcceptedPayload, EventType, decode_envelope
from shared.release_log import ReleaseLog
from shared.subjects import event_subject

from tests.ingress.support import WAIT_TIMEOUT_S, ApiKeys, wait_until

pytestmark = [pytest.mark.nats, pytest.mark.redis]

TTL_S = 600
TENANT = "acme"
USAGE = {"prompt_tokens": 7, "completion_tokens": 3}
COMPLETED = {"status": "completed", "finish_reason": "eos_token", "usage": USAGE}
CHUNKS = ["Hail", " to", " thee"]
MESSAGES = [{"role": "user", "content": "Greet the king."}]
# The client gives up on a request that gets no response headers after this long.
CLIENT_TIMEOUT_S = 20.0
# A request the ingress accepted is on NATS within milliseconds, so none after this long means none was accepted.
NO_EVENT_WAIT_S = 0.5


@pytest.fixture
def release_log(redis_client: redis.Redis) -> ReleaseLog:
    return ReleaseLog(redis_client, TTL_S)


@pytest.fixture
async def openai_client(ingress: str, api_keys: ApiKeys) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"{ingress}/v1", api_key=api_keys.acme, max_retries=0, timeout=CLIENT_TIMEOUT_S)
    yield client
    await client.close()


@pytest.fixture
async def accepted(nats_client: NatsClient) -> AsyncIterator[Subscription]:
    """A core NATS subscription to `request.accepted`, opened before the test sends anything."""
    subscription = await nats_client.subscribe(event_subject(EventType.ACCEPTED))
    yield subscription
    await subscription.unsubscribe()


@pytest.fixture
def user() -> str:
    """A user id that marks this test's request among the accepted events."""
    return f"user-{uuid.uuid4().hex[:8]}"


async def _request_id_of(accepted: Subscription, user: str) -> str:
    while True:
        envelope = decode_envelope((await accepted.next_msg(timeout=WAIT_TIMEOUT_S)).data)
        payload: AcceptedPayload = envelope.parsed_payload()
        if payload.request.user_id == user:
            return envelope.request_id


async def _release(
    accepted: Subscription, release_log: ReleaseLog, user: str, chunks: list[str], final: dict[str, Any] | None
) -> str:
    """Write the release log of `user`'s request once it is accepted, as moderation does; return its id."""
    request_id = await _request_id_of(accepted, user)
    for seq, text in enumerate(chunks):
        await release_log.append_chunk(TENANT, request_id, seq, text)
    if final is not None:
        await release_log.append_final(TENANT, request_id, final)
    return request_id


async def _stream_chat(client: openai.AsyncOpenAI, user: str, **options: Any) -> list[Any]:
    stream = await client.chat.completions.create(model="auto", messages=MESSAGES, user=user, stream=True, **options)
    return [chunk async for chunk in stream]


async def test_chat_stream_sends_each_chunk(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, user: str
) -> None:
    chunks, request_id = await asyncio.gather(
        _stream_chat(openai_client, user), _release(accepted, release_log, user, CHUNKS, COMPLETED)
    )

    texts = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert texts == CHUNKS
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.id == f"chatcmpl-{request_id}" for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


async def test_chat_stream_ends_with_usage_chunk(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, user: str
) -> None:
    chunks, _ = await asyncio.gather(
        _stream_chat(openai_client, user, stream_options={"include_usage": True}),
        _release(accepted, release_log, user, CHUNKS, COMPLETED),
    )

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 7
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].usage.total_tokens == 10
    assert chunks[-2].choices[0].finish_reason == "stop"


async def test_chat_without_stream_returns_text_and_usage(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, user: str
) -> None:
    completion, request_id = await asyncio.gather(
        openai_client.chat.completions.create(model="auto", messages=MESSAGES, user=user),
        _release(accepted, release_log, user, CHUNKS, COMPLETED),
    )

    assert completion.id == f"chatcmpl-{request_id}"
    assert completion.model == "auto"
    assert completion.choices[0].message.content == "Hail to thee"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 10


async def test_completion_stream_sends_text(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, user: str
) -> None:
    async def stream_completion() -> list[Any]:
        stream = await openai_client.completions.create(model="auto", prompt="Hail", user=user, stream=True)
        return [chunk async for chunk in stream]

    final = {**COMPLETED, "finish_reason": "length"}
    chunks, _ = await asyncio.gather(stream_completion(), _release(accepted, release_log, user, CHUNKS, final))

    assert "".join(chunk.choices[0].text for chunk in chunks) == "Hail to thee"
    assert chunks[-1].object == "text_completion"
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
async def test_blocked_prompt_raises_bad_request(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, user: str, stream: bool
) -> None:
    blocked = {"status": "blocked", "stage": "input", "blocked_by": "BanSubstrings", "reason": "banned text"}

    call = openai_client.chat.completions.create(model="auto", messages=MESSAGES, user=user, stream=stream)
    results = await asyncio.gather(call, _release(accepted, release_log, user, [], blocked), return_exceptions=True)

    error = results[0]
    assert isinstance(error, openai.BadRequestError)
    assert error.code == "content_blocked"
    assert error.param == "messages"
    assert "BanSubstrings" in error.message


async def test_failure_after_output_raises_in_stream(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, user: str
) -> None:
    failed = {"status": "failed", "error_code": "stream_broken", "message": "the model server closed the stream"}
    received: list[str] = []

    async def read_stream() -> None:
        async for chunk in await openai_client.chat.completions.create(
            model="auto", messages=MESSAGES, user=user, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    results = await asyncio.gather(read_stream(), _release(accepted, release_log, user, CHUNKS[:2], failed), return_exceptions=True)

    assert isinstance(results[0], openai.APIError)
    assert results[0].code == "stream_broken"
    assert received == CHUNKS[:2]


async def test_output_blocked_finishes_with_content_filter(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, user: str
) -> None:
    blocked = {"status": "blocked", "stage": "output", "blocked_by": "PrivateKey", "finish_reason": "moderation", "usage": USAGE}

    completion, _ = await asyncio.gather(
        openai_client.chat.completions.create(model="auto", messages=MESSAGES, user=user),
        _release(accepted, release_log, user, CHUNKS[:1], blocked),
    )

    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == CHUNKS[0]


async def test_disconnect_mid_stream_cancels_request(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, release_log: ReleaseLog, redis_client: redis.Redis, user: str
) -> None:
    opened = asyncio.create_task(
        openai_client.chat.completions.create(model="auto", messages=MESSAGES, user=user, stream=True)
    )
    request_id = await _release(accepted, release_log, user, CHUNKS[:1], None)
    stream = await opened
    await anext(stream)

    await stream.close()

    marks = CancelMarks(redis_client, TTL_S)
    assert await wait_until(lambda: marks.reason(TENANT, request_id)) == REASON_CLIENT_DISCONNECTED


async def test_disconnect_before_output_cancels_request(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, redis_client: redis.Redis, user: str
) -> None:
    opened = asyncio.create_task(
        openai_client.chat.completions.create(model="auto", messages=MESSAGES, user=user, stream=True)
    )
    request_id = await _request_id_of(accepted, user)

    opened.cancel()
    await asyncio.gather(opened, return_exceptions=True)

    marks = CancelMarks(redis_client, TTL_S)
    assert await wait_until(lambda: marks.reason(TENANT, request_id)) == REASON_CLIENT_DISCONNECTED


async def test_disconnect_without_stream_cancels_request(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, redis_client: redis.Redis, user: str
) -> None:
    waiting = asyncio.create_task(openai_client.chat.completions.create(model="auto", messages=MESSAGES, user=user))
    request_id = await _request_id_of(accepted, user)

    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)

    marks = CancelMarks(redis_client, TTL_S)
    assert await wait_until(lambda: marks.reason(TENANT, request_id)) == REASON_CLIENT_DISCONNECTED


async def test_unknown_model_raises_not_found(openai_client: openai.AsyncOpenAI, user: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES, user=user)

    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


async def test_unknown_model_accepts_nothing(
    openai_client: openai.AsyncOpenAI, accepted: Subscription, user: str
) -> None:
    with pytest.raises(openai.NotFoundError):
        await openai_client.completions.create(model="gpt-4o", prompt="Hail", user=user)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_request_id_of(accepted, user), NO_EVENT_WAIT_S)


async def test_models_list_names_experiments_and_variants(openai_client: openai.AsyncOpenAI) -> None:
    models = [model async for model in openai_client.models.list()]

    assert [model.id for model in models] == ["auto", "sampling-temperature", "control", "cooler", "default"]
    assert all(model.object == "model" for model in models)


async def test_models_retrieve_unknown_raises_not_found(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await openai_client.models.retrieve("gpt-4o")


async def test_invalid_key_raises_authentication_error(ingress: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{ingress}/v1", api_key="sk-sluice-not-a-key", max_retries=0)

    with pytest.raises(openai.AuthenticationError) as caught:
        await client.chat.completions.create(model="auto", messages=MESSAGES)
    await client.close()

    assert caught.value.code == "unauthorized"
    assert caught.value.type == "authentication_error"


async def test_out_of_range_temperature_names_param(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(model="auto", messages=MESSAGES, temperature=3.0)

    assert caught.value.param == "temperature"


async def test_missing_messages_names_param(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.post("/chat/completions", body={"model": "auto"}, cast_to=object)

    assert caught.value.param == "messages"
    assert caught.value.code == "missing_required_parameter"


async def test_more_than_one_choice_is_rejected(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(model="auto", messages=MESSAGES, n=2)

    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == "n"
