"""A seeded experiment as bus events, and the per-arm metric sums computed here from the same numbers.

Each unit is a user in one arm who sends a few requests. A request
completes (with a latency and token counts) and is delivered, or fails. Its
output may be blocked or flagged by moderation. Some requests get feedback:
a rating, a thumbs, a conversion or a value. A few units are served by both
arms, which the analysis must leave out.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from shared.events import (
    AcceptedPayload,
    AssignedPayload,
    ChatMessage,
    CompletedPayload,
    DeliveredPayload,
    Envelope,
    EventType,
    ExposedPayload,
    FailedPayload,
    FeedbackKind,
    FeedbackPayload,
    GenerationStats,
    ModeratedPayload,
    RequestSpec,
    ScannerResult,
    Usage,
    VariantSpec,
    Verdict,
    derive_event_id,
)
from shared.experiment_analysis.arm_data import MetricSums
from shared.experiment_analysis.metrics_config import MetricConfig, MetricType, RequestValue
from shared.prices import PriceTable

EXPERIMENT = "simulated"
ARMS = ("control", "treatment")


def model_of(variant: str) -> str:
    """Return the model that serves `variant` in the simulation."""
    return f"model-{variant}"


@dataclass
class SimulatedRequest:
    request_id: str
    experiment: str
    unit: str
    variant: str
    at: datetime
    failed: bool
    queue_ms: float = 0.0
    generation_ms: float = 0.0
    ttft_ms: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    blocked: bool = False
    flagged: bool = False
    refusal: bool = False
    feedback: list[tuple[FeedbackKind, float]] = field(default_factory=list)
    # A unit forced into its variant (for testing), which the analysis leaves out.
    forced: bool = False

    @property
    def latency_ms(self) -> float:
        return self.queue_ms + self.generation_ms


def simulate(
    seed: int,
    start: datetime,
    *,
    experiment: str = EXPERIMENT,
    arms: tuple[str, str] = ARMS,
    units_per_arm: int = 12,
    mixed_units: int = 2,
) -> list[SimulatedRequest]:
    """Return the requests of `units_per_arm` users per arm, of `mixed_units` users served by both arms, and of one forced user."""
    rng = random.Random(seed)
    requests: list[SimulatedRequest] = []
    plan = [[variant] for variant in arms for _ in range(units_per_arm)]
    plan += [list(arms) for _ in range(mixed_units)]
    for index, variants in enumerate(plan):
        unit = f"user-{seed}-{index}"
        for number in range(rng.randint(1, 4)):
            variant = variants[number % len(variants)]
            at = start + timedelta(minutes=index, seconds=number)
            requests.append(_request(rng, experiment, unit, variant, at))
    forced = _request(rng, experiment, f"user-{seed}-forced", arms[1], start)
    forced.forced = True
    return requests + [forced]


def _request(rng: random.Random, experiment: str, unit: str, variant: str, at: datetime) -> SimulatedRequest:
    request_id = uuid.UUID(int=rng.getrandbits(128)).hex
    request = SimulatedRequest(request_id, experiment, unit, variant, at, failed=rng.random() < 0.15)
    if not request.failed:
        request.queue_ms = round(rng.uniform(1, 50), 3)
        request.generation_ms = round(rng.uniform(100, 900), 3)
        request.ttft_ms = round(rng.uniform(10, 90), 3)
        request.prompt_tokens = rng.randint(5, 40)
        request.output_tokens = rng.randint(1, 120)
        request.blocked = rng.random() < 0.1
        request.flagged = request.blocked or rng.random() < 0.1
        request.refusal = rng.random() < 0.05
    for kind, chance in ((FeedbackKind.RATING, 0.4), (FeedbackKind.THUMBS, 0.5), (FeedbackKind.CONVERSION, 0.3)):
        if rng.random() < chance:
            request.feedback.append((kind, _feedback_value(rng, kind)))
    if rng.random() < 0.2:
        request.feedback.append((FeedbackKind.VALUE, round(rng.uniform(0, 100), 2)))
    return request


def _feedback_value(rng: random.Random, kind: FeedbackKind) -> float:
    if kind is FeedbackKind.RATING:
        return float(rng.randint(1, 5))
    return float(rng.random() < 0.5)


def events(tenant: str, requests: list[SimulatedRequest]) -> list[Envelope]:
    """Return every event of the requests: lifecycle, one exposure per unit and arm, and feedback."""
    envelopes: list[Envelope] = []
    exposed: set[tuple[str, str]] = set()
    for request in requests:
        envelopes += _lifecycle(tenant, request)
        if (request.unit, request.variant) not in exposed:
            exposed.add((request.unit, request.variant))
            envelopes.append(_exposure(tenant, request))
        for index, (kind, value) in enumerate(request.feedback):
            payload = FeedbackPayload(kind=kind, value=value, idempotency_key=f"key-{index}", channel="http")
            envelopes.append(_envelope(tenant, request, EventType.FEEDBACK, payload, 5000, seq=index))
    return envelopes


def _envelope(
    tenant: str, request: SimulatedRequest, event_type: EventType, payload: object, offset_ms: float, seq: int = 0
) -> Envelope:
    return Envelope(
        event_id=derive_event_id(tenant, request.request_id, event_type, seq=seq),
        type=event_type,
        request_id=request.request_id,
        tenant=tenant,
        ts=request.at + timedelta(milliseconds=offset_ms),
        payload=payload.model_dump(mode="json"),  # type: ignore[attr-defined]
    )


def _lifecycle(tenant: str, request: SimulatedRequest) -> list[Envelope]:
    spec = RequestSpec(messages=[ChatMessage(role="user", content="hello")], user_id=request.unit)
    variant = VariantSpec(key=request.variant, backend="local", model=model_of(request.variant))
    assigned = AssignedPayload(
        request=spec, experiment_key=request.experiment, variant=variant, hash_value=0.5, hash_attribute="user_id"
    )
    envelopes = [
        _envelope(tenant, request, EventType.ACCEPTED, AcceptedPayload(request=spec, prompt_chars=5), 0),
        _envelope(tenant, request, EventType.ASSIGNED, assigned, 20),
    ]

    stats = GenerationStats(
        backend="local",
        prompt_tokens=request.prompt_tokens,
        completion_tokens=request.output_tokens,
        queue_ms=request.queue_ms,
        ttft_ms=None if request.failed else request.ttft_ms,
        finish_reason="error" if request.failed else "stop",
    )
    if request.failed:
        failed = FailedPayload(stage="inference", error_code="backend_error", message="failed", stats=stats)
        return envelopes + [_envelope(tenant, request, EventType.FAILED, failed, 30)]

    usage = Usage(prompt_tokens=request.prompt_tokens, completion_tokens=request.output_tokens)
    completed = CompletedPayload(
        variant_key=request.variant, backend="local", attempt=0, text="hi", finish_reason="stop",
        usage=usage, generation_ms=request.generation_ms, stats=stats,
    )
    score = 0.75 if request.flagged else 0.0
    scanners = [ScannerResult(scanner="Toxicity", valid=not request.blocked, risk_score=score, duration_ms=1.0)]
    verdict = Verdict.BLOCKED if request.blocked else Verdict.PASSED
    moderated = ModeratedPayload(verdict=verdict, scanners=scanners, refusal=request.refusal)
    delivered = DeliveredPayload(text="hi", finish_reason="stop", chunks=1, usage=usage)
    return envelopes + [
        _envelope(tenant, request, EventType.COMPLETED, completed, 30),
        _envelope(tenant, request, EventType.MODERATED, moderated, 40),
        _envelope(tenant, request, EventType.DELIVERED, delivered, 50),
    ]


def _exposure(tenant: str, request: SimulatedRequest) -> Envelope:
    payload = ExposedPayload(
        experiment_key=request.experiment,
        variant_key=request.variant,
        hash_attribute="user_id",
        unit=request.unit,
        hash_value=None if request.forced else 0.5,
        source="forced" if request.forced else "hash",
    )
    return _envelope(tenant, request, EventType.EXPOSED, payload, 10)


def _request_value(request: SimulatedRequest, value: RequestValue, prices: PriceTable) -> float | None:
    if value is RequestValue.FAILED:
        return float(request.failed)
    if request.failed:
        # A failed request has no generation values, and no output to moderate.
        return None if value not in (RequestValue.OUTPUT_BLOCKED, RequestValue.MODERATION_FLAGGED, RequestValue.REFUSAL) else 0.0
    price = prices.price_of(model_of(request.variant))
    return {
        RequestValue.LATENCY_MS: _as_float32(request.latency_ms),
        RequestValue.TTFT_MS: _as_float32(request.ttft_ms),
        RequestValue.OUTPUT_TOKENS: float(request.output_tokens),
        RequestValue.COST_USD: price.cost_usd(request.prompt_tokens, request.output_tokens),
        RequestValue.OUTPUT_BLOCKED: float(request.blocked),
        RequestValue.MODERATION_FLAGGED: float(request.flagged),
        RequestValue.REFUSAL: float(request.refusal),
    }[value]


def _as_float32(value: float) -> float:
    """Return `value` as `request_signals` stores it: latencies are Float32 columns."""
    return float(np.float32(value))


def _observations(requests: list[SimulatedRequest], metric: MetricConfig, prices: PriceTable) -> list[float]:
    if metric.feedback is not None:
        return [value for request in requests for kind, value in request.feedback if kind is metric.feedback]
    assert metric.request_value is not None
    values = [_request_value(request, metric.request_value, prices) for request in requests]
    return [value for value in values if value is not None]


def _unit_pair(observations: list[float], metric_type: MetricType) -> tuple[float, float]:
    if metric_type is MetricType.BINOMIAL:
        return float(any(value > 0 for value in observations)), 1.0
    if metric_type is MetricType.MEAN:
        return sum(observations), 1.0
    return sum(observations), float(len(observations))


def expected_sums(
    requests: list[SimulatedRequest], metrics: list[MetricConfig], prices: PriceTable
) -> tuple[dict[str, dict[str, MetricSums]], int]:
    """Return each arm's metric sums over its single-arm units, and the number of units served by both arms."""
    by_unit: dict[str, list[SimulatedRequest]] = defaultdict(list)
    for request in requests:
        if not request.forced:
            by_unit[request.unit].append(request)
    pure = {unit: unit_requests for unit, unit_requests in by_unit.items() if len({r.variant for r in unit_requests}) == 1}
    sums: dict[str, dict[str, MetricSums]] = {}
    for variant in sorted({request.variant for request in requests}):
        units = [unit_requests for unit_requests in pure.values() if unit_requests[0].variant == variant]
        sums[variant] = {metric.key: _sums(units, metric, prices) for metric in metrics}
    return sums, len(by_unit) - len(pure)


def _sums(units: list[list[SimulatedRequest]], metric: MetricConfig, prices: PriceTable) -> MetricSums:
    pairs = [_unit_pair(_observations(unit_requests, metric, prices), metric.type) for unit_requests in units]
    return MetricSums(
        units=len(pairs),
        sum_x=sum(x for x, _ in pairs),
        sum_xx=sum(x * x for x, _ in pairs),
        sum_y=sum(y for _, y in pairs),
        sum_yy=sum(y * y for _, y in pairs),
        sum_xy=sum(x * y for x, y in pairs),
    )
