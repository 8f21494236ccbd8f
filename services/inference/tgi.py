"""A `Backend` for servers that speak Text Generation Inference's API, through `huggingface_hub.AsyncInferenceClient`.

Requests go to `POST {url}/v1/chat/completions` with `stream=True`, so the
server applies the model's chat template. This module is the only place that
handles aiohttp's and huggingface_hub's errors, and it translates them into
the `BackendError` tree.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from typing import Any

import aiohttp
import structlog
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import OverloadedError, TextGenerationError
from huggingface_hub.errors import ValidationError as TgiValidationError

from services.inference.backends import (
    BackendError,
    BackendGenerationFailed,
    BackendProtocolError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    StreamItem,
    single_endpoint_url,
)
from services.inference.chat_stream import read_chunks, sampling_arguments
from shared.events import ChatMessage, GenerationParams
from shared.experiments import BackendConfig

log = structlog.get_logger(__name__)

# TGI serves the base model under any model name and treats the name as a
# LoRA adapter id when adapters are loaded.
BASE_MODEL_NAME = "tgi"

# HTTP 429 means the server is overloaded for now, so a retry may succeed.
# Other 4xx codes mean that the request itself is invalid.
_HTTP_TOO_MANY_REQUESTS = 429
_HTTP_SERVER_ERROR = 500


class TgiBackend:
    """Streams chat completions from one TGI-protocol server. Safe to share between concurrent requests.

    Raises ValueError when `config` lists several endpoints.
    """

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        self._url = single_endpoint_url(name, config)
        self._connect_timeout_s = config.connect_timeout_s
        self._first_token_timeout_s = config.first_token_timeout_s
        self._token_timeout_s = config.token_timeout_s

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        model: str | None = None,
        adapter_id: str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Yield `TokenDelta` items, then one `StreamEnd`. Raise a `BackendError` subclass on failure.

        `model` is not sent: TGI serves one base model under any name, so the
        request names the adapter or `BASE_MODEL_NAME`. Each call has its own
        HTTP session, closed when the iterator ends or is closed.
        """
        # timeout=None: aiohttp's total timeout would cut long streams, so
        # the connect and per-token timeouts below bound each wait instead.
        client = AsyncInferenceClient(base_url=self._url, timeout=None)
        try:
            chunks = await self._open(client, messages, params, adapter_id)
            async for item in read_chunks(
                chunks,
                self._url,
                first_token_timeout_s=self._first_token_timeout_s,
                token_timeout_s=self._token_timeout_s,
            ):
                yield item
        except BackendError:
            raise
        except Exception as error:
            translated = _translate(error, self._url)
            if translated is None:
                raise
            raise translated from error
        finally:
            await _close_client(client)

    async def close(self) -> None:
        """Do nothing: every call opens and closes its own HTTP session."""

    async def _open(
        self,
        client: AsyncInferenceClient,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        adapter_id: str | None,
    ) -> AsyncIterable[Any]:
        # NOTE: huggingface_hub's client takes only a total timeout, so
        # connect_timeout_s bounds the connection and the response headers
        # together. TGI and the model server send the headers before they
        # generate. A server that held them until its first token would time
        # out after connect_timeout_s, not first_token_timeout_s.
        async with asyncio.timeout(self._connect_timeout_s):
            return await client.chat_completion(
                messages=[message.model_dump() for message in messages],
                model=adapter_id or BASE_MODEL_NAME,
                stream=True,
                stream_options={"include_usage": True},
                **sampling_arguments(params),
            )



async def _close_client(client: AsyncInferenceClient) -> None:
    """Close the client's HTTP sessions.

    NOTE: huggingface_hub 0.36 stops reading a chat stream at `[DONE]` and
    leaves closing its session to the byte reader's finalizer, which runs as
    a separate task. When that task closes the session first, the client's
    own close raises KeyError for the session it no longer tracks. The
    session is closed either way.
    """
    try:
        await client.close()
    except KeyError:
        log.debug("session_already_closed")


def _translate(error: Exception, url: str) -> BackendError | None:
    """Return the `BackendError` for a client library error, or None when `error` is not one."""
    # InferenceTimeoutError is a TimeoutError too, so this check comes first.
    if isinstance(error, TimeoutError):
        return BackendTimeout(f"{url} timed out")
    if isinstance(error, TextGenerationError):
        return _translate_stream_error(error, url)
    if isinstance(error, aiohttp.ClientResponseError):
        return _translate_status(error, url)
    if isinstance(error, aiohttp.ClientError):
        return BackendUnavailable(f"connection to {url} failed: {error}")
    if isinstance(error, json.JSONDecodeError):
        return BackendProtocolError(f"{url} sent an event that is not JSON: {error}")
    return None


def _translate_stream_error(error: TextGenerationError, url: str) -> BackendError:
    """Translate an error event inside the stream. huggingface_hub picks its class from TGI's `error_type`."""
    if isinstance(error, OverloadedError):
        return BackendUnavailable(f"{url} is overloaded: {error}")
    if isinstance(error, TgiValidationError):
        return BackendRejected(f"{url} rejected the request: {error}")
    return BackendGenerationFailed(f"{url} failed during generation: {error}")


def _translate_status(error: aiohttp.ClientResponseError, url: str) -> BackendError:
    # huggingface_hub stores the parsed JSON error body on the exception before raising it.
    body = getattr(error, "response_error_payload", None)
    detail = body.get("error") if isinstance(body, dict) else None
    message = f"{url} returned HTTP {error.status}: {detail or error.message}"
    if error.status == _HTTP_TOO_MANY_REQUESTS or error.status >= _HTTP_SERVER_ERROR:
        return BackendUnavailable(message)
    return BackendRejected(message)
