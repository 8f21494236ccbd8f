"""Request and response bodies of the ingress HTTP API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.events import ChatMessage, GenerationParams, RequestSpec, ScannerResult, Usage

from services.ingress.state_store import RecordField, RequestStatus


class CreateRequestBody(BaseModel):
    """The body of `POST /v1/requests`: exactly one of `messages` or `prompt`."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    # Shorthand for `messages: [{"role": "user", "content": prompt}]`.
    prompt: str | None = Field(default=None, min_length=1)
    params: GenerationParams = Field(default_factory=GenerationParams)
    user_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_of_messages_or_prompt(self) -> Self:
        if self.messages is not None and self.prompt is not None:
            raise ValueError("send either 'messages' or 'prompt', not both")
        if self.messages is None and self.prompt is None:
            raise ValueError("missing 'messages' (a list of {role, content}) or 'prompt' (a string): send exactly one")
        return self

    def to_spec(self) -> RequestSpec:
        """Return the request as the events carry it, with `prompt` expanded to one user message."""
        messages = self.messages or [ChatMessage(role="user", content=self.prompt or "")]
        return RequestSpec(messages=messages, params=self.params, user_id=self.user_id, metadata=self.metadata)


class AcceptedResponse(BaseModel):
    """The body of a 202: where to poll the status and where to stream the output."""

    request_id: str
    status_url: str
    stream_url: str


class CancelResponse(BaseModel):
    """The body of a 202 to DELETE: the cancel is on its way; the status turns `cancelled` once generation stopped."""

    request_id: str
    # The status when the cancel was sent.
    status: str
    status_url: str


class Verdicts(BaseModel):
    input: list[ScannerResult] = Field(default_factory=list)
    output: list[ScannerResult] = Field(default_factory=list)


class VariantInfo(BaseModel):
    experiment_key: str | None = None
    variant_key: str | None = None


class Timings(BaseModel):
    """Event timestamps in UTC; `ttft_ms` runs from acceptance to the first token, `total_ms` to the terminal event."""

    accepted_at: datetime | None = None
    screened_at: datetime | None = None
    assigned_at: datetime | None = None
    first_token_at: datetime | None = None
    completed_at: datetime | None = None
    delivered_at: datetime | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str


class RequestStatusResponse(BaseModel):
    """The body of `GET /v1/requests/{id}`; fields stay `null` until the event that sets them was projected."""

    request_id: str
    status: RequestStatus
    # The released text, exactly what stream clients received; set once the request finished.
    text: str | None = None
    verdicts: Verdicts = Field(default_factory=Verdicts)
    blocked_by: str | None = None
    reason: str | None = None
    variant: VariantInfo | None = None
    timings: Timings = Field(default_factory=Timings)
    usage: Usage | None = None
    finish_reason: str | None = None
    error: ErrorInfo | None = None
    # How many of the same tenant's requests wait ahead of this one in its
    # endpoint pool's queue; 0 once the inference service took it, null
    # before assignment and after the request ended.
    queue_position: int | None = None


def _optional(fields: dict[str, str], name: RecordField) -> str | None:
    """Return a field's value, None when it is missing or empty (the projector stores an unset value as '')."""
    return fields.get(name.value) or None


def _timestamp(fields: dict[str, str], name: RecordField) -> datetime | None:
    value = _optional(fields, name)
    return datetime.fromisoformat(value) if value else None


def _milliseconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() * 1000.0 if start and end else None


def _scanner_results(fields: dict[str, str], name: RecordField) -> list[ScannerResult]:
    value = _optional(fields, name)
    return [ScannerResult.model_validate(item) for item in json.loads(value)] if value else []


def _timings(fields: dict[str, str]) -> Timings:
    accepted_at = _timestamp(fields, RecordField.ACCEPTED_AT)
    first_token_at = _timestamp(fields, RecordField.FIRST_TOKEN_AT)
    return Timings(
        accepted_at=accepted_at,
        screened_at=_timestamp(fields, RecordField.SCREENED_AT),
        assigned_at=_timestamp(fields, RecordField.ASSIGNED_AT),
        first_token_at=first_token_at,
        completed_at=_timestamp(fields, RecordField.COMPLETED_AT),
        delivered_at=_timestamp(fields, RecordField.DELIVERED_AT),
        ttft_ms=_milliseconds_between(accepted_at, first_token_at),
        total_ms=_milliseconds_between(accepted_at, _timestamp(fields, RecordField.ENDED_AT)),
    )


def _variant(fields: dict[str, str]) -> VariantInfo | None:
    variant_key = _optional(fields, RecordField.VARIANT_KEY)
    if variant_key is None:
        return None
    return VariantInfo(experiment_key=_optional(fields, RecordField.EXPERIMENT_KEY), variant_key=variant_key)


def _usage(fields: dict[str, str]) -> Usage | None:
    prompt_tokens = _optional(fields, RecordField.PROMPT_TOKENS)
    completion_tokens = _optional(fields, RecordField.COMPLETION_TOKENS)
    if prompt_tokens is None or completion_tokens is None:
        return None
    return Usage(prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens))


def _error(fields: dict[str, str]) -> ErrorInfo | None:
    code = _optional(fields, RecordField.ERROR_CODE)
    return ErrorInfo(code=code, message=fields.get(RecordField.ERROR_MESSAGE.value, "")) if code else None


def status_response(request_id: str, fields: dict[str, str], queue_position: int | None = None) -> RequestStatusResponse:
    """Build the API view of a status record as `RequestStateStore.read` returns it."""
    return RequestStatusResponse(
        request_id=request_id,
        status=RequestStatus(fields[RecordField.STATUS.value]),
        text=fields.get(RecordField.TEXT.value),
        verdicts=Verdicts(
            input=_scanner_results(fields, RecordField.INPUT_VERDICTS),
            output=_scanner_results(fields, RecordField.OUTPUT_VERDICTS),
        ),
        blocked_by=_optional(fields, RecordField.BLOCKED_BY),
        reason=_optional(fields, RecordField.REASON),
        variant=_variant(fields),
        timings=_timings(fields),
        usage=_usage(fields),
        finish_reason=_optional(fields, RecordField.FINISH_REASON),
        error=_error(fields),
        queue_position=queue_position,
    )
