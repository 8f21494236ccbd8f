"""Request bodies of the OpenAI-compatible routes and their translation into a `RequestSpec`.

The bodies accept the OpenAI parameters that Sluice honours. A parameter
that Sluice cannot honour (`n` above 1, `tools`, `logprobs` ...) is accepted
only at the value that changes nothing, since clients often send defaults,
and any other value is rejected with a 400 naming it. A parameter that the
OpenAI API does not define is rejected too, as OpenAI does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.events import ChatMessage, GenerationParams, RequestSpec

from services.ingress.openai_errors import OpenAIError

# Text parts of one message are joined with a newline, as vLLM joins them.
CONTENT_PART_SEPARATOR = "\n"

# Parameters of the OpenAI API that Sluice cannot honour, each with the
# values that change nothing. `null` is accepted for every one of them.
_NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    # Without tools there is nothing to call in parallel.
    "parallel_tool_calls": (True, False),
    "functions": ([],),
    "function_call": ("none",),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "store": (False,),
    "service_tier": ("auto", "default"),
    "suffix": ("",),
    # Every seed changes the sampling, which Sluice cannot seed per request.
    "seed": (),
}


class StreamOptions(BaseModel):
    """`stream_options`. `include_obfuscation` is accepted and has no effect because Sluice adds no padding."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = None


class _OpenAIBody(BaseModel):
    """Fields that both routes share. Unknown fields are kept for `check_supported`, which names them."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def max_tokens_param(self) -> tuple[str, int | None]:
        """Return the name and value of the parameter that limits the output length."""
        return "max_tokens", self.max_tokens

    def chat_messages(self) -> list[ChatMessage]:
        raise NotImplementedError

    def request_metadata(self) -> dict[str, str]:
        return {}


class ChatCompletionMessage(BaseModel):
    """One message. `developer` is OpenAI's newer name for `system`, and `content` may be a list of text parts."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return CONTENT_PART_SEPARATOR.join(_part_text(index, part) for index, part in enumerate(value))

    def to_chat_message(self) -> ChatMessage:
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=self.content)


def _part_text(index: int, part: Any) -> str:
    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        raise ValueError(f"content part {index} is of type {kind!r}; Sluice accepts only text parts {{type: text, text}}")
    return part["text"]


class ChatCompletionBody(_OpenAIBody):
    """The body of `POST /v1/chat/completions`."""

    messages: list[ChatCompletionMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    metadata: dict[str, str] | None = None

    def max_tokens_param(self) -> tuple[str, int | None]:
        if self.max_completion_tokens is not None and self.max_tokens is not None:
            raise OpenAIError(
                400,
                "invalid_value",
                "send max_completion_tokens or max_tokens, not both (max_tokens is the older name)",
                param="max_tokens",
            )
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens

    def chat_messages(self) -> list[ChatMessage]:
        return [message.to_chat_message() for message in self.messages]

    def request_metadata(self) -> dict[str, str]:
        return dict(self.metadata or {})


class CompletionBody(_OpenAIBody):
    """The body of `POST /v1/completions`. The prompt becomes one user message, so the chat template applies.

    `prompt` is a string or a list of exactly one string; token id arrays are
    not accepted. An omitted `max_tokens` takes the variant's value, not
    OpenAI's default of 16.
    """

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(f"send one prompt; received a list of {len(value)} (one request generates one completion)")
        return value

    def chat_messages(self) -> list[ChatMessage]:
        text = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        return [ChatMessage(role="user", content=text)]


def check_supported(body: _OpenAIBody) -> None:
    """Raise `OpenAIError` (400) naming the first parameter that Sluice cannot honour or the API does not define."""
    for name, value in (body.model_extra or {}).items():
        if name not in _NEUTRAL_VALUES:
            raise OpenAIError(400, "unknown_parameter", f"unrecognized request parameter {name!r}", param=name)
        if value is not None and value not in _NEUTRAL_VALUES[name]:
            raise OpenAIError(
                400,
                "unsupported_parameter",
                f"{name}={value!r} is not supported: Sluice generates one text completion per request "
                f"without tools, log probabilities, penalties or seeds; omit {name}",
                param=name,
            )
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(400, "invalid_value", "stream_options is only allowed when stream is true", param="stream_options")


def request_spec(body: _OpenAIBody) -> RequestSpec:
    """Return the request as the events carry it; raises `OpenAIError` (400) naming an out-of-range parameter."""
    return RequestSpec(
        messages=body.chat_messages(),
        params=generation_params(body),
        user_id=body.user,
        metadata=body.request_metadata(),
        model=body.model,
    )


def generation_params(body: _OpenAIBody) -> GenerationParams:
    """Map the OpenAI sampling parameters; `GenerationParams` checks the ranges, so each limit has one home."""
    max_tokens_name, max_tokens = body.max_tokens_param()
    names = {"max_new_tokens": max_tokens_name, "temperature": "temperature", "top_p": "top_p", "stop": "stop"}
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    try:
        return GenerationParams(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, stop=stop)
    except ValidationError as error:
        detail = error.errors()[0]
        # GenerationParams checks single fields only, so every error's location names one.
        field = str(detail["loc"][0])
        param = names.get(field, field)
        message = f"{param}: {detail['msg']} (received {detail['input']!r})"
        raise OpenAIError(400, "invalid_value", message, param=param) from error
