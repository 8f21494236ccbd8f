"""The event envelope and every payload that travels on the bus.

Every message on NATS is an `Envelope` serialised as JSON. `schemas/events/`
contains the JSON Schema of each payload, and `tests/test_event_schemas.py`
checks that the files and these models agree.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Bump when a payload changes incompatibly. Consumers accept this version and
# the one before it, because messages in JetStream outlive a deploy.
CURRENT_SCHEMA_VERSION = 1
ACCEPTED_SCHEMA_VERSIONS = frozenset(v for v in (CURRENT_SCHEMA_VERSION - 1, CURRENT_SCHEMA_VERSION) if v >= 1)

# Event ids are derived from (tenant, request id, type, attempt), so a stage
# that is redelivered and publishes again produces the same id. JetStream's
# duplicate window and the telemetry table then keep one copy.
_EVENT_ID_NAMESPACE = uuid.UUID("5b1f0a8e-6a52-4f0e-9d7c-6c1d2b9e4a31")


class EventType(str, enum.Enum):
    ACCEPTED = "request.accepted"
    SCREENED = "request.screened"
    ASSIGNED = "request.assigned"
    FIRST_TOKEN = "generation.first_token"
    COMPLETED = "generation.completed"
    MODERATED = "output.moderated"
    DELIVERED = "output.delivered"
    FAILED = "request.failed"
    EXPIRED = "request.expired"
    CANCELLED = "request.cancelled"
    # One row of a `sluice safety eval` run; its request_id is the run's id, not a request's.
    SAFETY_EVALUATED = "safety.evaluated"
    # One (variant, signal) comparison of a drift evaluation. Its request_id is the evaluation's id.
    DRIFT_EVALUATED = "drift.evaluated"
    # A unit's first assignment to an experiment in a session window. Its request_id is the request that exposed it.
    EXPOSED = "experiment.exposed"
    # Feedback on a delivered request (a rating, a thumbs, a conversion or a value). Its request_id is that request's.
    FEEDBACK = "feedback.received"
    # One `sluice model eval` run of a model version on a held-out set. Its request_id is the run's id.
    MODEL_EVALUATED = "model.evaluated"
    # Chunk messages ride the CHUNKS stream, not EVENTS: telemetry does not store them.
    CHUNK = "generation.chunk"
    END = "generation.end"


class UnsupportedSchemaVersion(ValueError):
    """An envelope carries a schema version this build cannot read."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Model):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerationParams(_Model):
    """Sampling parameters. `None` means "not set": the variant's value, then the backend's default, applies."""

    max_new_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = Field(default=None, max_length=8)


class RequestSpec(_Model):
    """The client's request, carried forward by each stage so that every message is self-contained."""

    messages: list[ChatMessage] = Field(min_length=1)
    params: GenerationParams = Field(default_factory=GenerationParams)
    user_id: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    # The OpenAI API's `model` name: an experiment key, a variant key or "auto"
    # (see `shared.experiments.find_model`). None routes as usual.
    model: str | None = None


# The action a scanner's policy entry took on a text (see `ScannerResult.action`).
ScannerAction = Literal["block", "flag", "redact"]


class ScannerResult(_Model):
    """One scanner's verdict. `risk_score` runs from 0.0 (no risk) to 1.0, as in llm-guard."""

    scanner: str
    valid: bool
    risk_score: float
    duration_ms: float
    # What the scanner's policy entry did with this text: "block" or "flag"
    # (the entry's action) when it found the text invalid, "redact" when it
    # found the text valid but replaced parts of it, such as personal data.
    # None when it did neither, and in events written before this field.
    action: ScannerAction | None = None


class Verdict(str, enum.Enum):
    PASSED = "passed"
    BLOCKED = "blocked"


class VariantSpec(_Model):
    """The model variant that serves a request, as the experiment config names it."""

    key: str
    backend: str
    model: str | None = None
    adapter_id: str | None = None
    params: GenerationParams = Field(default_factory=GenerationParams)
    # The model's quantization scheme ("awq", "gptq", "int8", "int4", ...), a
    # label for telemetry and analysis; None for full precision or unknown.
    quantization: str | None = None
    # Text with a "{prompt}" placeholder, which the experiments loader requires
    # exactly once. The inference service puts the last user message in its
    # place, and None sends the messages as they are.
    prompt_template: str | None = None


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AcceptedPayload(_Model):
    request: RequestSpec
    prompt_chars: int
    idempotency_key: str | None = None


class ScreenedPayload(_Model):
    request: RequestSpec
    verdict: Verdict
    scanners: list[ScannerResult]
    # Set when the verdict is "blocked": the first scanner that failed and why.
    blocked_by: str | None = None
    reason: str | None = None


class AssignedPayload(_Model):
    request: RequestSpec
    experiment_key: str | None
    variant: VariantSpec
    # GrowthBook's hash of the unit in [0, 1), also for a variant read from the sticky store.
    # None when no experiment matched or the variant was forced.
    hash_value: float | None = None
    # The hashed attribute: "user_id" gives a sticky assignment, "request_id" a per-request one.
    hash_attribute: str


class FirstTokenPayload(_Model):
    variant_key: str
    backend: str
    attempt: int
    # Time from the inference service taking the request to the first token.
    backend_ttft_ms: float


class LatencyPercentiles(_Model):
    """Percentiles of a set of durations, in milliseconds."""

    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class GenerationStats(_Model):
    """The usage and timings of one generation attempt, recorded however it ended.

    Completed, failed and cancelled attempts all carry it, so partial streams
    are accounted for too.
    """

    backend: str
    # The endpoint URL that served the attempt; None when no endpoint was reached.
    endpoint: str | None = None
    # None when the backend never reported it, as for a stream cut before its end.
    prompt_tokens: int | None = None
    # The backend's count when the stream ended normally, else the number of
    # streamed pieces (one token each from TGI, vLLM and the embedded server).
    completion_tokens: int = 0
    # From `request.assigned` to the start of generation: the wait in the endpoint pool's queue.
    queue_ms: float
    # From the start of generation to the first piece of text; None when none arrived.
    ttft_ms: float | None = None
    # Gaps between consecutive pieces of text; None with fewer than two pieces.
    inter_token: LatencyPercentiles | None = None
    # The backend's own reason, or "error" or "cancelled".
    finish_reason: str


class CompletedPayload(_Model):
    variant_key: str
    backend: str
    attempt: int
    text: str
    finish_reason: str
    usage: Usage
    generation_ms: float
    # None only in events written before accounting existed.
    stats: GenerationStats | None = None


class ModeratedPayload(_Model):
    verdict: Verdict
    scanners: list[ScannerResult]
    blocked_by: str | None = None
    reason: str | None = None
    # True when a refusal scanner (NoRefusalLight) found the whole output to
    # read as a refusal, recorded for metrics. False for an output blocked while
    # streaming, because refusal scanners read only the whole output.
    refusal: bool = False


class DeliveredPayload(_Model):
    """The released output, exactly what WebSocket clients received."""

    text: str
    finish_reason: str
    chunks: int
    usage: Usage


class FailedPayload(_Model):
    stage: str
    error_code: str
    message: str
    # Set by the inference stage, for an attempt that reached generation.
    stats: GenerationStats | None = None


class CancelledPayload(_Model):
    """A request stopped on its client's behalf (DELETE, or a streaming client that disconnected)."""

    stage: str
    # shared/cancellation.py names the reasons, e.g. "client_request".
    reason: str
    stats: GenerationStats | None = None


class ExpiredPayload(_Model):
    stage: str
    deadline: datetime


class ChunkPayload(_Model):
    attempt: int
    seq: int
    text: str


class EndPayload(_Model):
    """The last message of one generation attempt on the CHUNKS stream."""

    attempt: int
    finish_reason: str
    usage: Usage
    # Set when generation failed after it started; the request then ends as failed.
    error_code: str | None = None
    error_message: str | None = None


class SafetyEvaluatedPayload(_Model):
    """The scores of one scanner on one labelled prompt set in a `sluice safety eval` run.

    A positive is a prompt labelled as an attack (injection, jailbreak or
    harmful), a negative one labelled benign. A rate is None when its
    denominator is 0, as for the false-positive rate of a set of attacks only.
    """

    # The scanner's name in the policy, or "whole chain" for the whole input chain.
    scanner: str
    # The scanner set: "sluice" (the policy as configured) or "rule-based baseline" (llm-guard's rule-based scanners alone).
    scanner_set: str
    # The prompt file's name without ".jsonl", or "all" for every file together.
    dataset: str
    # "held-out" when only the classifier's held-out split was scanned, else "all".
    split: str
    positives: int
    negatives: int
    true_positives: int
    false_positives: int
    detection_rate: float | None
    false_positive_rate: float | None
    precision: float | None
    f1: float | None
    latency: LatencyPercentiles


class DriftWindow(_Model):
    """A window of samples that a drift evaluation compared: its time range and sample count."""

    start: datetime
    end: datetime
    sample_count: int = Field(ge=0)


class DriftStatistic(_Model):
    """One statistic of a drift comparison, with the threshold it fires at."""

    name: str
    value: float
    # None for a statistic reported for context only (a rate, a centroid distance), which never fires.
    threshold: float | None
    # "above" or "below": the side of the threshold on which the statistic fires.
    direction: str
    fired: bool


class DriftEvaluatedPayload(_Model):
    """The comparison of one signal of one model variant's current window with its frozen reference.

    The drift service publishes one per compared (variant, signal) and
    evaluation. Telemetry stores it, and a materialized view copies it into
    the `drift_reports` table.
    """

    variant: str
    # A `shared.drift_signals.Signal` value, such as "output_chars".
    signal: str
    # "fired" when every alarm statistic crossed its threshold in this window, else "quiet".
    outcome: str
    # Whether an alert is active for (variant, signal) after this window, under the hysteresis rule.
    alert_active: bool
    reference: DriftWindow
    current: DriftWindow
    # The first statistic is the alarm statistic that an alert names.
    statistics: list[DriftStatistic] = Field(min_length=1)
    # The Bonferroni-corrected level of each KS and rate test in this evaluation.
    per_test_alpha: float


class ExposedPayload(_Model):
    """A unit seen in an experiment: the assignment service publishes one per unit, experiment and session window.

    Telemetry stores it, and a materialized view copies it into the
    `exposures` table that experiment analysis counts units from.
    """

    experiment_key: str
    variant_key: str
    # The hashed attribute ("user_id" or "request_id") and its value: the unit.
    hash_attribute: str
    unit: str
    # GrowthBook's hash of the unit in [0, 1), or None when the variant was forced or came from the sticky store.
    hash_value: float | None = None
    # The experiment's bucket version when the unit was assigned (sticky bucketing).
    bucket_version: int = Field(default=0, ge=0)
    # How the variant was chosen: "hash", "sticky" (the unit's stored variant) or "forced".
    source: Literal["hash", "sticky", "forced"] = "hash"


class FeedbackKind(str, enum.Enum):
    """The measure a piece of feedback gives, which also fixes the values it may take."""

    # A score from 1 to 5.
    RATING = "rating"
    # 1 for thumbs up, 0 for thumbs down.
    THUMBS = "thumbs"
    # 1 when the user converted (bought, signed up, accepted the answer), 0 when they explicitly did not.
    CONVERSION = "conversion"
    # Any finite number, such as revenue.
    VALUE = "value"


class FeedbackPayload(_Model):
    """Feedback on one request, accepted by the ingress within the attribution window.

    The envelope's request_id and tenant are the request's. The event id is
    derived from the idempotency key, so a retried submission stores one row.
    """

    kind: FeedbackKind
    value: float
    metadata: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str
    # The feedback's source: "http" (POST /v1/feedback) or "nats" (the feedback subject).
    channel: Literal["http", "nats"]


class ModelEvaluatedPayload(_Model):
    """The figures of one model version on one held-out set, from a `sluice model eval` run.

    Telemetry stores it, and a materialized view copies it into the
    `model_evals` table, so runs of a version compare over time. A rate is
    a fraction of `examples` in [0, 1].
    """

    # The name the run was given (`--model-version`), by default the registry name or folder name.
    model_version: str
    # The base model's folder name or hub id.
    base: str
    # The LoRA adapter folder's name, or None for the base model alone.
    adapter: str | None = None
    # The quantization scheme ("int8", "int4", "awq", "gptq"), or None for full precision.
    quantization: str | None = None
    # The held-out file's name without ".jsonl", and the SHA-256 hex digest of its bytes.
    dataset: str
    dataset_sha256: str
    examples: int = Field(ge=1)
    # exp of the mean negative log-likelihood per completion token, given the prompt.
    perplexity: float
    completion_tokens: int = Field(ge=1)
    # The task metric's name, such as "exact_match", and the fraction of examples that met it.
    metric: str
    accuracy: float = Field(ge=0.0, le=1.0)
    # Output scanners of the policy that ran over each generated output, in chain order.
    scanners: list[str]
    # Outputs that a blocking scanner stopped, and outputs that only a flagging scanner marked.
    blocked_rate: float = Field(ge=0.0, le=1.0)
    flagged_rate: float = Field(ge=0.0, le=1.0)
    # Per scanner: the fraction of outputs it found invalid, whatever its action.
    scanner_rates: dict[str, float] = Field(default_factory=dict)
    # Greedy decoding of at most `max_new_tokens` per example; latency is per generation.
    max_new_tokens: int = Field(ge=1)
    seed: int
    generated_tokens: int = Field(ge=0)
    latency: LatencyPercentiles
    tokens_per_s: float


PAYLOAD_MODELS: dict[EventType, type[_Model]] = {
    EventType.ACCEPTED: AcceptedPayload,
    EventType.SCREENED: ScreenedPayload,
    EventType.ASSIGNED: AssignedPayload,
    EventType.FIRST_TOKEN: FirstTokenPayload,
    EventType.COMPLETED: CompletedPayload,
    EventType.MODERATED: ModeratedPayload,
    EventType.DELIVERED: DeliveredPayload,
    EventType.FAILED: FailedPayload,
    EventType.EXPIRED: ExpiredPayload,
    EventType.CANCELLED: CancelledPayload,
    EventType.SAFETY_EVALUATED: SafetyEvaluatedPayload,
    EventType.DRIFT_EVALUATED: DriftEvaluatedPayload,
    EventType.EXPOSED: ExposedPayload,
    EventType.FEEDBACK: FeedbackPayload,
    EventType.MODEL_EVALUATED: ModelEvaluatedPayload,
    EventType.CHUNK: ChunkPayload,
    EventType.END: EndPayload,
}

TERMINAL_EVENT_TYPES = frozenset({EventType.DELIVERED, EventType.FAILED, EventType.EXPIRED, EventType.CANCELLED})


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def derive_event_id(tenant: str, request_id: str, event_type: EventType, attempt: int = 0, seq: int = 0) -> str:
    """Return the deterministic id of an event, so a redelivered stage republishes the same id."""
    name = f"{tenant}/{request_id}/{event_type.value}/{attempt}/{seq}"
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, name))


class Envelope(_Model):
    """The wrapper of every bus message.

    `deadline` is when the request stops being worth working on: a stage that
    receives it later publishes `request.expired` instead of doing the work.
    `trace` carries W3C trace context: `traceparent` and `tracestate` as in
    the NATS headers, plus `trace_id`, `span_id` and `parent_span_id` of the
    publish that wrote the event, so stored events join on `trace_id`.
    `route` is the HTTP route that accepted the request, such as
    "/v1/chat/completions", which selects the policy's route overrides; None
    for a request that no HTTP route accepted.
    """

    event_id: str
    type: EventType
    schema_version: int = CURRENT_SCHEMA_VERSION
    request_id: str
    tenant: str
    ts: datetime
    deadline: datetime | None = None
    trace: dict[str, str] = Field(default_factory=dict)
    route: str | None = None
    payload: dict[str, Any]

    def parsed_payload(self) -> Any:
        """Return the payload as its typed model; raises `pydantic.ValidationError` when it does not fit."""
        return PAYLOAD_MODELS[self.type].model_validate(self.payload)

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.deadline is not None and (now or utc_now()) >= self.deadline

    def follow_up(self, event_type: EventType, payload: _Model, *, attempt: int = 0, seq: int = 0) -> Envelope:
        """Build the next event of the same request, keeping tenant, deadline, trace context and route."""
        return Envelope(
            event_id=derive_event_id(self.tenant, self.request_id, event_type, attempt, seq),
            type=event_type,
            request_id=self.request_id,
            tenant=self.tenant,
            ts=utc_now(),
            deadline=self.deadline,
            trace=dict(self.trace),
            route=self.route,
            payload=payload.model_dump(mode="json"),
        )


def new_envelope(
    event_type: EventType,
    *,
    request_id: str,
    tenant: str,
    payload: _Model,
    deadline: datetime | None = None,
    trace: dict[str, str] | None = None,
    route: str | None = None,
) -> Envelope:
    """Build the first event of a request."""
    return Envelope(
        event_id=derive_event_id(tenant, request_id, event_type),
        type=event_type,
        request_id=request_id,
        tenant=tenant,
        ts=utc_now(),
        deadline=deadline,
        trace=trace or {},
        route=route,
        payload=payload.model_dump(mode="json"),
    )


def decode_envelope(data: bytes | str) -> Envelope:
    """Parse a bus message, rejecting schema versions this build cannot read.

    Raises `pydantic.ValidationError` for a malformed envelope and
    `UnsupportedSchemaVersion` for a version outside `ACCEPTED_SCHEMA_VERSIONS`.
    """
    envelope = Envelope.model_validate_json(data)
    if envelope.schema_version not in ACCEPTED_SCHEMA_VERSIONS:
        raise UnsupportedSchemaVersion(
            f"event {envelope.event_id} has schema_version {envelope.schema_version}; "
            f"this build reads versions {sorted(ACCEPTED_SCHEMA_VERSIONS)}: upgrade the consumer"
        )
    return envelope
