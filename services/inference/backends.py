"""The interface between the inference service and a model server, and its error vocabulary.

A `Backend` streams one chat completion as `TokenDelta` items followed by a
single `StreamEnd`. Every failure surfaces as a `BackendError` subclass. Each
adapter translates its client library's errors into these and keeps the
original as `__cause__`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from shared.events import ChatMessage, GenerationParams, Usage
from shared.experiments import BackendConfig


@dataclass(frozen=True)
class TokenDelta:
    """A piece of generated text, never empty."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a stream. `finish_reason` is the server's own (TGI: "length", "eos_token", "stop_sequence")."""

    finish_reason: str
    usage: Usage


StreamItem = TokenDelta | StreamEnd


class Backend(Protocol):
    """A model server that streams chat completions."""

    def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        model: str | None = None,
        adapter_id: str | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield the completion of `messages` as `TokenDelta` items, then exactly one `StreamEnd`.

        `model` and `adapter_id` come from the variant; a backend uses them as
        its server expects. A parameter that is None is not sent, so the
        server's default applies.
        Raises a `BackendError` subclass on any failure, before or during the
        stream. Close the iterator (`contextlib.aclosing`) when stopping early.
        """
        ...

    async def close(self) -> None:
        """Release the backend's connections; the service calls it once, at shutdown."""
        ...


def single_endpoint_url(name: str, config: BackendConfig) -> str:
    """Return the URL of a config's only endpoint. Raises ValueError when the config lists several.

    A client calls one server, and `EndpointPool` spreads requests over several clients.
    """
    if config.url is None:
        raise ValueError(
            f"backend {name} lists {len(config.endpoint_urls)} endpoints, but a client calls one: "
            "build an EndpointPool, which gives each endpoint its own client"
        )
    return config.url


class BackendError(Exception):
    """A backend call failed.

    `error_code` is the code that `request.failed` carries. `retryable` is true
    when the same call may succeed if tried again.
    """

    error_code = "backend_error"
    retryable = False


class BackendUnavailable(BackendError):
    """The server could not be reached, dropped the connection, is overloaded or failed with HTTP 5xx."""

    error_code = "backend_unavailable"
    retryable = True


class BackendTimeout(BackendUnavailable):
    """No connection, first token or next token arrived within the backend's timeout."""

    error_code = "backend_timeout"


class BackendRejected(BackendError):
    """The server rejected the request as invalid (HTTP 4xx other than 429): sending it again cannot help."""

    error_code = "backend_rejected"


class BackendGenerationFailed(BackendError):
    """The server accepted the request but reported an error while generating."""

    error_code = "generation_failed"
    retryable = True


class BackendProtocolError(BackendError):
    """The server's reply does not follow the protocol, for example a stream without a finish reason."""

    error_code = "backend_protocol_error"


class NoEndpointAvailable(BackendError):
    """Every endpoint of the pool has an open circuit breaker or a half-open one whose trial call is running.

    Not retryable within the request: no breaker lets a call through before
    its open time has passed.
    """

    error_code = "no_endpoint_available"
