"""`POST /v1/chat/completions` (streamed and not) and `GET /v1/models`, in the OpenAI format TGI serves."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import APIRouter, Response

from services.model_server.chat_schemas import ChatRequest, render_prompt, to_sampling_params
from services.model_server.engine import FinishReason, Generation, GenerationEngine
from services.model_server.errors import ModelServerError
from services.model_server.sse import DONE_EVENT, sse_event, sse_response
from services.model_server.text_tracking import held_back_length
from services.model_server.validation import resolve_adapter

log = structlog.get_logger(__name__)

# TGI's finish reasons mapped to OpenAI's: both an end token and a stop sequence are "stop".
_OPENAI_FINISH_REASONS: dict[FinishReason, str] = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def chat_router(engine: GenerationEngine, accepted_model_names: frozenset[str], fingerprint: str) -> APIRouter:
    """Return the OpenAI-compatible routes.

    A request's `model` is one of `accepted_model_names` for the base model,
    or one of the engine's adapter ids.
    """
    router = APIRouter()
    created_s = int(time.time())

    def prepare(request: ChatRequest) -> Generation:
        adapter = resolve_adapter(request.model, accepted_model_names, engine.adapters, engine.model_id)
        input_ids = render_prompt(request, engine)
        params = to_sampling_params(request, len(input_ids), engine.limits)
        engine.check_lengths(len(input_ids), params.max_new_tokens)
        return engine.generate(input_ids, params, adapter)

    @router.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: ChatRequest) -> dict[str, Any] | Response:
        generation = prepare(request)
        reply = _Reply(engine.model_id, fingerprint)
        if request.stream:
            return sse_response(reply.stream(generation, request.include_usage))
        return await reply.complete(generation)

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        ids = [engine.model_id, *sorted(engine.adapters)]
        models = [{"id": model_id, "object": "model", "created": created_s, "owned_by": "sluice"} for model_id in ids]
        return {"object": "list", "data": models}

    return router


class _Reply:
    """The identity fields shared by every chunk of one completion, and the two ways to send it."""

    def __init__(self, model_id: str, fingerprint: str) -> None:
        self._head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": fingerprint,
        }

    async def complete(self, generation: Generation) -> dict[str, Any]:
        async for _token in generation:
            pass
        message = {"role": "assistant", "content": _final_content(generation)}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(generation)}
        return {**self._head, "object": "chat.completion", "choices": [choice], "usage": _usage(generation)}

    async def stream(self, generation: Generation, include_usage: bool) -> AsyncIterator[str]:
        """Yield a chunk per piece of text, a final chunk with the finish reason, the usage chunk if asked, then `[DONE]`.

        Text that could be the start of a stop sequence is held back until it is
        known not to be one, so no part of a stop sequence reaches the client.
        """
        try:
            async for chunk in self._content_chunks(generation):
                yield sse_event(chunk)
        except ModelServerError as error:
            log.warning("stream_failed", error_type=error.error_type, error=error.message)
            yield sse_event(error.to_body())
            return
        if include_usage:
            yield sse_event(self._chunk([], usage=_usage(generation)))
        yield DONE_EVENT

    async def _content_chunks(self, generation: Generation) -> AsyncIterator[dict[str, Any]]:
        sent = 0
        async for _token in generation:
            end = _releasable_end(generation)
            if end > sent or generation.finished:
                finish = _finish(generation) if generation.finished else None
                yield self._chunk([self._choice(generation.text[sent:end], finish)])
                sent = max(sent, end)

    def _choice(self, content: str, finish_reason: str | None) -> dict[str, Any]:
        delta = {"role": "assistant", "content": content}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        return {**self._head, "object": "chat.completion.chunk", "choices": choices, "usage": usage}


def _releasable_end(generation: Generation) -> int:
    """Return how much of the generated text may be sent now."""
    if generation.finished:
        return len(_final_content(generation))
    return len(generation.text) - held_back_length(generation.text, generation.params.stop)


def _final_content(generation: Generation) -> str:
    # OpenAI's API leaves the stop sequence out of the content.
    if generation.stop_index is not None:
        return generation.text[: generation.stop_index]
    return generation.text


def _finish(generation: Generation) -> str:
    return _OPENAI_FINISH_REASONS[generation.finish_reason]


def _usage(generation: Generation) -> dict[str, int]:
    prompt_tokens = len(generation.input_ids)
    completion_tokens = generation.generated_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
