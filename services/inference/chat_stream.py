"""Reading a streamed chat completion, shared by the TGI and OpenAI-compatible backends.

Both clients yield chunks of the same shape, OpenAI's `ChatCompletionChunk`:
`choices[].delta.content`, `choices[].finish_reason` and, in the last chunk
when `stream_options.include_usage` is set, `usage`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from services.inference.backends import BackendProtocolError, StreamEnd, StreamItem, TokenDelta
from shared.events import GenerationParams, Usage


async def read_chunks(
    chunks: AsyncIterable[Any], url: str, *, first_token_timeout_s: float, token_timeout_s: float
) -> AsyncIterator[StreamItem]:
    """Yield a `TokenDelta` per non-empty delta, then one `StreamEnd`.

    Raises TimeoutError when the first chunk or a later one does not arrive in
    its timeout, and `BackendProtocolError` when the stream ends without a
    finish reason.
    """
    iterator = aiter(chunks)
    finish_reason: str | None = None
    usage = Usage()
    timeout_s = first_token_timeout_s
    while (chunk := await _next_or_none(iterator, timeout_s)) is not None:
        timeout_s = token_timeout_s
        if chunk.usage is not None:
            usage = Usage(prompt_tokens=chunk.usage.prompt_tokens, completion_tokens=chunk.usage.completion_tokens)
        for choice in chunk.choices:
            if choice.delta.content:
                yield TokenDelta(choice.delta.content)
            finish_reason = choice.finish_reason or finish_reason

    if finish_reason is None:
        raise BackendProtocolError(f"the stream from {url} ended without a finish_reason")
    yield StreamEnd(finish_reason=finish_reason, usage=usage)


async def _next_or_none(iterator: AsyncIterator[Any], timeout_s: float) -> Any | None:
    async with asyncio.timeout(timeout_s):
        try:
            return await anext(iterator)
        except StopAsyncIteration:
            return None


def sampling_arguments(params: GenerationParams) -> dict[str, Any]:
    """Map our parameter names to the chat completion API's, leaving out every parameter that is not set."""
    arguments = {
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": params.stop,
    }
    return {name: value for name, value in arguments.items() if value is not None}
