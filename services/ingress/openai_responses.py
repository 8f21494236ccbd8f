"""Response bodies and stream chunks of the OpenAI-compatible routes, built from the release log.

`ChatFormat` writes `chat.completion` bodies and `chat.completion.chunk`
chunks; `TextFormat` writes `text_completion` for `/v1/completions`. Both
take the response id from the Sluice request id (`chatcmpl-<id>`, `cmpl-<id>`),
so a client can read the request's status with `GET /v1/requests/{id}`.
`model` echoes the name the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.cancellation import CANCELLED

from services.ingress.openai_errors import OpenAIError

# The backends' finish reasons in OpenAI's words. TGI reports "eos_token" and
# "stop_sequence", and moderation reports "moderation" for an output it
# blocked, which OpenAI calls "content_filter". Other reasons pass unchanged.
_FINISH_REASONS = {
    "eos_token": "stop",
    "stop_sequence": "stop",
    "stop": "stop",
    "length": "length",
    "moderation": "content_filter",
}

# The HTTP status of a request that failed before any output, by its error
# code. Any other code is a 500.
_FAILURE_STATUS = {
    # The model server rejected the input, for example a prompt longer than its context.
    "backend_rejected": 400,
    "backend_error": 502,
    "backend_protocol_error": 502,
    "backend_unavailable": 503,
    "backend_timeout": 504,
}
# No standard HTTP status means "cancelled". 499 "Client Closed Request" is the
# status that googleapis' google/rpc/code.proto gives to CANCELLED.
CANCELLED_STATUS = 499


@dataclass(frozen=True)
class Finish:
    """The end of a request that produced a response: OpenAI's `finish_reason` and the token usage."""

    finish_reason: str
    usage: dict[str, int]


def openai_usage(usage: dict[str, Any] | None) -> dict[str, int]:
    prompt_tokens = int((usage or {}).get("prompt_tokens", 0))
    completion_tokens = int((usage or {}).get("completion_tokens", 0))
    total_tokens = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total_tokens}


def final_outcome(final: dict[str, Any], prompt_param: str) -> Finish | OpenAIError:
    """Translate the release log's final entry into a finish, or into the error the client gets.

    An output blocked by moderation finishes with `content_filter`, as OpenAI
    reports filtered output. A prompt blocked at screening becomes a 400
    `content_blocked` error that names `prompt_param` and the scanner.
    """
    status = final.get("status")
    if status == "completed" or (status == "blocked" and final.get("stage") == "output"):
        reason = str(final.get("finish_reason", ""))
        return Finish(_FINISH_REASONS.get(reason, reason), openai_usage(final.get("usage")))
    if status == "blocked":
        message = f"the prompt was blocked by the {final.get('blocked_by')} scanner: {final.get('reason')}"
        return OpenAIError(400, "content_blocked", message, param=prompt_param)
    if status == "failed":
        code = str(final.get("error_code", "generation_failed"))
        return OpenAIError(_FAILURE_STATUS.get(code, 500), code, str(final.get("message", "generation failed")))
    if status == CANCELLED:
        return OpenAIError(CANCELLED_STATUS, CANCELLED, f"the request was cancelled ({final.get('reason')})")
    if status == "expired":
        return OpenAIError(504, "request_expired", "the request passed its deadline before it was served; retry")
    return OpenAIError(500, "unknown_final_status", f"the request ended with the unknown status {status!r}")


class ResponseFormat:
    """Writes the bodies of one request: the whole response, stream chunks and the usage chunk."""

    id_prefix = ""
    response_object = ""
    chunk_object = ""
    # The request parameter that carries the prompt, named by a `content_blocked` error.
    prompt_param = ""

    def __init__(self, request_id: str, model: str, created_s: int) -> None:
        self._id = f"{self.id_prefix}{request_id}"
        self._model = model
        self._created_s = created_s

    def response(self, text: str, finish: Finish) -> dict[str, Any]:
        choice = self.whole_choice(text, finish.finish_reason)
        return {**self._header(self.response_object), "choices": [choice], "usage": finish.usage}

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {**self._header(self.chunk_object), "choices": [choice]}

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        """Return the last chunk of a stream with `stream_options.include_usage`: no choices, only usage."""
        return {**self._header(self.chunk_object), "choices": [], "usage": usage}

    def _header(self, object_name: str) -> dict[str, Any]:
        return {"id": self._id, "object": object_name, "created": self._created_s, "model": self._model}

    def whole_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def opening_choice(self) -> dict[str, Any] | None:
        """Return the choice that opens a stream, or None when the format has none."""
        raise NotImplementedError

    def text_choice(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def finish_choice(self, finish_reason: str) -> dict[str, Any]:
        raise NotImplementedError


class ChatFormat(ResponseFormat):
    id_prefix = "chatcmpl-"
    response_object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    prompt_param = "messages"

    def whole_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}

    def opening_choice(self) -> dict[str, Any] | None:
        # OpenAI's first chunk carries the role and empty content.
        return self._delta({"role": "assistant", "content": ""}, None)

    def text_choice(self, text: str) -> dict[str, Any]:
        return self._delta({"content": text}, None)

    def finish_choice(self, finish_reason: str) -> dict[str, Any]:
        return self._delta({}, finish_reason)

    def _delta(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class TextFormat(ResponseFormat):
    id_prefix = "cmpl-"
    response_object = "text_completion"
    chunk_object = "text_completion"
    prompt_param = "prompt"

    def whole_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def opening_choice(self) -> dict[str, Any] | None:
        return None

    def text_choice(self, text: str) -> dict[str, Any]:
        return self.whole_choice(text, None)

    def finish_choice(self, finish_reason: str) -> dict[str, Any]:
        return self.whole_choice("", finish_reason)
