"""A `Backend` for engines that serve OpenAI's chat completions API (vLLM, SGLang, TGI's `/v1`), through `openai`.

Requests go to `POST {url}/v1/chat/completions` with `stream=True`. One
`openai.AsyncOpenAI` client per backend keeps its connections open between
requests. This module is the only place that handles the `openai` package's
errors, and it translates them into the `BackendError` tree.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx2
import openai

from services.inference.backends import (
    BackendError,
    BackendGenerationFailed,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    StreamItem,
    single_endpoint_url,
)
from services.inference.chat_stream import read_chunks, sampling_arguments
from shared.events import ChatMessage, GenerationParams
from shared.experiments import BackendConfig, ConfigError


# OpenAI's client requires an API key. Engines started without one (vLLM
# without --api-key, SGLang, TGI) ignore the header, so this placeholder is
# sent when the backend names no key variable.
NO_API_KEY = "not-needed"

# HTTP 429 means the server is overloaded for now, so a retry may succeed.
# Other 4xx codes mean that the request itself is invalid.
_HTTP_TOO_MANY_REQUESTS = 429
_HTTP_SERVER_ERROR = 500


class OpenAICompatibleBackend:
    """Streams chat completions from one OpenAI-compatible server. Safe to share between concurrent requests.

    The request's model is the variant's adapter id when it has one (vLLM and
    SGLang serve each LoRA adapter under its own model name), else the
    variant's model, else the backend's `model`. Raises ValueError when
    `config` lists several endpoints.
    """

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        self._url = single_endpoint_url(name, config)
        self._default_model = config.model
        self._first_token_timeout_s = config.first_token_timeout_s
        self._token_timeout_s = config.token_timeout_s
        # read=None: a read timeout would cut a long stream, so the first-token
        # and per-token timeouts below bound each wait instead. max_retries=0:
        # the generator owns retries and failover.
        self._client = openai.AsyncOpenAI(
            base_url=f"{self._url.rstrip('/')}/v1",
            api_key=_api_key(name, self._url, config.api_key_env),
            timeout=httpx2.Timeout(None, connect=config.connect_timeout_s),
            max_retries=0,
        )

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        model: str | None = None,
        adapter_id: str | None = None,
    ) -> AsyncIterator[StreamItem]:
        """Yield `TokenDelta` items, then one `StreamEnd`. Raise a `BackendError` subclass on failure."""
        try:
            chunks = await self._open(messages, params, adapter_id or model or self._default_model)
            try:
                async for item in read_chunks(
                    chunks,
                    self._url,
                    first_token_timeout_s=self._first_token_timeout_s,
                    token_timeout_s=self._token_timeout_s,
                ):
                    yield item
            finally:
                await chunks.close()
        except BackendError:
            raise
        except openai.APIStatusError as error:
            raise _translate_status(error, self._url, await _error_detail(error)) from error
        except Exception as error:
            translated = _translate(error, self._url)
            if translated is None:
                raise
            raise translated from error

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.close()

    async def _open(self, messages: Sequence[ChatMessage], params: GenerationParams, model: str | None) -> Any:
        if model is None:
            raise BackendRejected(
                f"backend {self.name} needs a model name: set `model` on the variant or on the backend"
            )
        async with asyncio.timeout(self._first_token_timeout_s):
            return await self._client.chat.completions.create(
                model=model,
                messages=[message.model_dump() for message in messages],
                stream=True,
                stream_options={"include_usage": True},
                **sampling_arguments(params),
            )



def _api_key(name: str, url: str, api_key_env: str | None) -> str:
    """Return the key from the environment variable the config names, so no key is ever written in a config file."""
    if api_key_env is None:
        return NO_API_KEY
    key = os.environ.get(api_key_env)
    if not key:
        raise ConfigError(
            f"backend {name} ({url}): api_key_env names {api_key_env}, which is not set. "
            "Export it or remove api_key_env"
        )
    return key


def _translate(error: Exception, url: str) -> BackendError | None:
    """Return the `BackendError` for an `openai` or network error, or None when `error` is not one."""
    # APITimeoutError is an APIConnectionError, so this check comes first.
    if isinstance(error, (TimeoutError, openai.APITimeoutError)):
        return BackendTimeout(f"{url} timed out")
    if isinstance(error, openai.APIConnectionError):
        return BackendUnavailable(f"connection to {url} failed: {error.__cause__ or error}")
    if isinstance(error, openai.APIError):
        # An error event inside the stream, after the server accepted the request.
        return BackendGenerationFailed(f"{url} failed during generation: {error.message}")
    if isinstance(error, (httpx2.TransportError, OSError)):
        return BackendUnavailable(f"connection to {url} failed: {error}")
    return None


async def _error_detail(error: openai.APIStatusError) -> str | None:
    """Return the server's error message from the response body, or None when it has none.

    The client does not read the error response of a streaming request, so
    this reads it. TGI sends `{"error": "..."}`, OpenAI's API
    `{"error": {"message": ...}}`, and some engines a top-level `message`.
    """
    try:
        await error.response.aread()
        body = error.response.json()
    except (httpx2.HTTPError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    detail = body.get("error", body.get("message"))
    if isinstance(detail, dict):
        detail = detail.get("message")
    return detail if isinstance(detail, str) else None


def _translate_status(error: openai.APIStatusError, url: str, detail: str | None) -> BackendError:
    message = f"{url} returned HTTP {error.status_code}: {detail or error.message}"
    if error.status_code == _HTTP_TOO_MANY_REQUESTS or error.status_code >= _HTTP_SERVER_ERROR:
        return BackendUnavailable(message)
    return BackendRejected(message)
