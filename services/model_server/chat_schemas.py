"""The OpenAI chat completion request as TGI accepts it, its validation, and the prompt it renders to."""

from __future__ import annotations

from typing import Any, Literal

from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict

from services.model_server.engine import GenerationEngine, ServingLimits
from services.model_server.sampling import SamplingParams
from services.model_server.validation import (
    check_penalty,
    check_positive,
    check_probability,
    check_stop,
    validation_error,
    reject_if_set,
)


class TextPart(BaseModel):
    """One text part of a message's content."""

    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    """An image part, parsed so that the error reports images as unsupported instead of the body as malformed."""

    type: Literal["image_url"]
    image_url: dict[str, Any]


class ChatMessage(BaseModel):
    """One message; `content` is text or a list of parts, as OpenAI's API allows."""

    model_config = ConfigDict(extra="forbid")

    role: str
    content: str | list[TextPart | ImagePart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a final chunk with token counts before `[DONE]`."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """TGI's `ChatRequest`, plus OpenAI's `user` and `max_completion_tokens`; other unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage]
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    tool_prompt: str | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        """True when a streamed reply must end with a usage chunk."""
        return self.stream_options is not None and bool(self.stream_options.include_usage)


def render_prompt(request: ChatRequest, engine: GenerationEngine) -> list[int]:
    """Apply the tokenizer's chat template to the messages and return the prompt's token ids.

    Raises `RequestValidationFailed` for unsupported message content, a role
    the template rejects, or a tokenizer without a chat template.
    """
    if not request.messages:
        raise validation_error("`messages` must contain at least one message")
    messages = [{"role": m.role, "content": _message_text(m, index)} for index, m in enumerate(request.messages)]
    try:
        rendered = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError as error:
        raise validation_error(f"the chat template rejected `messages`: {error}") from error
    except ValueError as error:
        raise validation_error(f"this model cannot format chat messages: {error}. Use POST /generate") from error
    # The template writes any BOS token itself, so the tokenizer must not add one.
    return engine.tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _message_text(message: ChatMessage, index: int) -> str:
    if message.tool_calls or message.tool_call_id:
        raise validation_error(f"`messages[{index}]` carries tool calls, which this server does not support")
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    if any(isinstance(part, ImagePart) for part in message.content):
        raise validation_error(f"`messages[{index}].content` contains an image; this model reads text only")
    return "".join(part.text for part in message.content)


def to_sampling_params(request: ChatRequest, input_length: int, limits: ServingLimits) -> SamplingParams:
    """Validate the sampling fields and return the parameters; temperature 0 means greedy decoding.

    Without `max_tokens`, generation may fill the rest of the context, as in TGI.
    """
    _reject_unsupported(request)
    _check_ranges(request)
    max_tokens = request.max_tokens if request.max_tokens is not None else request.max_completion_tokens
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    return SamplingParams(
        max_new_tokens=max_tokens if max_tokens is not None else max(limits.max_total_tokens - input_length, 1),
        do_sample=request.temperature != 0,
        temperature=1.0 if request.temperature in (None, 0) else request.temperature,
        top_p=request.top_p,
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        seed=request.seed,
        stop=check_stop(stop, limits),
    )


def _reject_unsupported(request: ChatRequest) -> None:
    reject_if_set("tools", request.tools, "tool calling is not implemented")
    reject_if_set("tool_prompt", request.tool_prompt, "tool calling is not implemented")
    reject_if_set("response_format", request.response_format, "constrained decoding is not implemented")
    reject_if_set("logit_bias", request.logit_bias, "logit biases are not implemented")
    reject_if_set("logprobs", request.logprobs, "chat log-probabilities are not implemented; POST /generate returns them")
    reject_if_set("top_logprobs", request.top_logprobs, "chat log-probabilities are not implemented")
    if request.tool_choice not in (None, "none", "auto"):
        raise validation_error(f"`tool_choice` must be 'none' or 'auto' without tools. Given: {request.tool_choice!r}")
    if request.n not in (None, 1):
        raise validation_error(f"`n` must be 1 on this server, which generates one choice per request. Given: {request.n}")
    if request.stream_options is not None and not request.stream:
        raise validation_error("`stream_options` is only allowed with `stream` true")


def _check_ranges(request: ChatRequest) -> None:
    if request.temperature is not None and request.temperature < 0:
        raise validation_error(f"`temperature` must be >= 0 (0 means greedy decoding). Given: {request.temperature}")
    check_positive("max_tokens", request.max_tokens)
    check_positive("max_completion_tokens", request.max_completion_tokens)
    check_probability("top_p", request.top_p, allow_one=True)
    check_penalty("frequency_penalty", request.frequency_penalty)
    check_penalty("presence_penalty", request.presence_penalty)
    if request.seed is not None and request.seed < 0:
        raise validation_error(f"`seed` must be >= 0. Given: {request.seed}")
