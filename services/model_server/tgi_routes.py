"""TGI's native routes: `POST /generate`, `POST /generate_stream`, `POST /`, `GET /info` and `GET /health`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import structlog
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from services.model_server.engine import Generation, GenerationEngine
from services.model_server.errors import ModelServerError
from services.model_server.sse import sse_event, sse_response
from services.model_server.tgi_schemas import (
    CompatGenerateRequest,
    GenerateRequest,
    details_body,
    stream_details_body,
    to_sampling_params,
    token_body,
    truncate_inputs,
)
from services.model_server.validation import resolve_adapter

log = structlog.get_logger(__name__)


def tgi_router(engine: GenerationEngine, info: dict[str, Any]) -> APIRouter:
    """Return the TGI routes for `engine`; `info` is the body of `GET /info`."""
    router = APIRouter()
    # TGI treats an adapter id equal to the base model's id as "no adapter".
    base_names = frozenset({engine.model_id})

    def prepare(request: GenerateRequest) -> Generation:
        p = request.parameters
        adapter = resolve_adapter(p.adapter_id, base_names, engine.adapters, engine.model_id)
        params = to_sampling_params(p, engine.limits)
        input_ids = truncate_inputs(engine.encode(request.inputs), p, engine.limits)
        engine.check_lengths(len(input_ids), params.max_new_tokens)
        return engine.generate(input_ids, params, adapter)

    @router.post("/generate")
    async def generate(request: GenerateRequest) -> dict[str, Any]:
        return await _generate_body(request, prepare(request))

    @router.post("/generate_stream")
    async def generate_stream(request: GenerateRequest) -> Response:
        return sse_response(_stream_events(request, prepare(request)))

    @router.post("/")
    async def compat_generate(request: CompatGenerateRequest) -> Response:
        generation = prepare(request)
        if request.stream:
            return sse_response(_stream_events(request, generation))
        # Without streaming, TGI returns a one-element array from `POST /`.
        return JSONResponse([await _generate_body(request, generation)])

    @router.get("/info")
    async def get_info() -> dict[str, Any]:
        return info

    @router.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    return router


async def _generate_body(request: GenerateRequest, generation: Generation) -> dict[str, Any]:
    tokens = [token async for token in generation]
    body: dict[str, Any] = {"generated_text": _generated_text(request, generation)}
    if request.parameters.details:
        body["details"] = details_body(generation, tokens)
    return body


async def _stream_events(request: GenerateRequest, generation: Generation) -> AsyncIterator[str]:
    """Yield one `StreamResponse` event per token; the last also carries the text and, if asked, the details.

    An error after the stream started becomes an error event, as in TGI,
    because the 200 status has already been sent.
    """
    try:
        index = 0
        async for token in generation:
            index += 1
            event: dict[str, Any] = {"index": index, "token": token_body(token), "generated_text": None, "details": None}
            if generation.params.top_n_tokens:
                event["top_tokens"] = [token_body(top) for top in token.top_tokens]
            if generation.finished:
                event["generated_text"] = _generated_text(request, generation)
                event["details"] = stream_details_body(generation) if request.parameters.details else None
            yield sse_event(event)
    except ModelServerError as error:
        log.warning("stream_failed", error_type=error.error_type, error=error.message)
        yield sse_event(error.to_body())


def _generated_text(request: GenerateRequest, generation: Generation) -> str:
    if request.parameters.return_full_text:
        return request.inputs + generation.text
    return generation.text
