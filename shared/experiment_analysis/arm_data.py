"""Reading an experiment's arms from the store: units, exposures, and each metric's sums over units.

ClickHouse computes every metric per unit and then sums per arm, so only a
few numbers per arm and metric travel over NATS, however many units the
experiment has. For each metric, a unit contributes an observation value x
and a count y (see `MetricType`), and an arm returns n (its units), Σx, Σx²,
Σy, Σy² and Σxy. The means, variances and covariance that Welch's t-test and
the delta method need follow from those sums.

Which rows count:
- A request belongs to the experiment when its `request.assigned` event
  names the experiment, within the time range. Its unit is the hashed
  attribute's value: the request's user_id, or the request id itself.
- A unit that was served by more than one arm (after a bucket version change
  without sticky bucketing, for example) is left out of every metric and
  counted as `mixed_units`, as GrowthBook does with multiple exposures.
- A unit with a forced variant is left out, because forcing is for testing
  and its variant was not chosen at random.
- Feedback counts for the request it names, whatever its time: the ingress
  accepts feedback only within the attribution window.
- Rates per request count requests that ended (delivered, failed, cancelled
  or expired), so a request still in flight does not count as a success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.events import TERMINAL_EVENT_TYPES, EventType, FeedbackKind
from shared.experiment_analysis.metrics_config import MetricConfig, MetricType, RequestValue
from shared.prices import TOKENS_PER_PRICE_UNIT, PriceTable
from shared.store_client import StoreClient

_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

# The value of each request value per request, from the request's rows in
# `request_signals` (one row per event). The generation values come from
# `generation.completed`, the moderation values from `output.moderated`.
_COMPLETED = f"type = '{EventType.COMPLETED.value}'"
_MODERATED = f"type = '{EventType.MODERATED.value}'"
_REQUEST_VALUE_SQL: dict[RequestValue, str] = {
    RequestValue.LATENCY_MS: f"anyIf(total_ms, {_COMPLETED})",
    RequestValue.TTFT_MS: f"anyIf(ttft_ms, {_COMPLETED})",
    RequestValue.OUTPUT_TOKENS: f"anyIf(toFloat64(output_tokens), {_COMPLETED})",
    RequestValue.COST_USD: (
        f"anyIf(toNullable(ifNull(prompt_tokens, 0) * transform(model, {{price_models:Array(String)}}, "
        "{prompt_prices:Array(Float64)}, {default_prompt_price:Float64}) "
        "+ ifNull(output_tokens, 0) * transform(model, {price_models:Array(String)}, "
        "{completion_prices:Array(Float64)}, {default_completion_price:Float64})) / {tokens_per_price_unit:Float64}, "
        f"{_COMPLETED})"
    ),
    RequestValue.OUTPUT_BLOCKED: f"if(ended, toFloat64(countIf(moderation_verdict = 'blocked' AND {_MODERATED}) > 0), NULL)",
    RequestValue.MODERATION_FLAGGED: (
        f"if(ended, toFloat64(countIf(arrayExists(score -> score > 0, mapValues(moderation_scores)) AND {_MODERATED}) > 0), NULL)"
    ),
    RequestValue.REFUSAL: f"if(ended, toFloat64(countIf(ifNull(refusal, false) AND {_MODERATED}) > 0), NULL)",
    RequestValue.FAILED: f"if(ended, toFloat64(countIf(type = '{EventType.FAILED.value}') > 0), NULL)",
}

_TERMINAL_TYPES = "(" + ", ".join(f"'{event_type.value}'" for event_type in sorted(TERMINAL_EVENT_TYPES)) + ")"


@dataclass(frozen=True)
class MetricSums:
    """One arm's sums of a metric over its units: n units, and Σx, Σx², Σy, Σy², Σxy of their (value, count) pairs."""

    units: int
    sum_x: float
    sum_xx: float
    sum_y: float
    sum_yy: float
    sum_xy: float


@dataclass(frozen=True)
class ArmData:
    """The stored data of one arm: its units and exposures, and the sums of every metric."""

    variant: str
    units: int
    mixed_units: int
    exposure_units: int
    exposures: int
    metrics: dict[str, MetricSums] = field(default_factory=dict)


def _request_values_sql() -> str:
    values = ",\n            ".join(f"{sql} AS value_{value.value}" for value, sql in _REQUEST_VALUE_SQL.items())
    return f"""
        SELECT request_id,
            countIf(type IN {_TERMINAL_TYPES}) > 0 AS ended,
            {values}
        FROM (
            SELECT * FROM request_signals
            WHERE tenant = {{tenant:String}} AND request_id IN (SELECT request_id FROM assigned)
            LIMIT 1 BY event_id
        )
        GROUP BY request_id"""


def _unit_columns_sql() -> str:
    """Return, per source, the unit's sum of observations, their count, and whether one was above 0."""
    columns = []
    for value in RequestValue:
        name = f"request_{value.value}"
        columns += [
            f"sum(ifNull(r.value_{value.value}, 0)) AS {name}_sum",
            f"count(r.value_{value.value}) AS {name}_count",
            f"max(ifNull(r.value_{value.value}, 0) > 0) AS {name}_any",
        ]
    for kind in FeedbackKind:
        name = f"feedback_{kind.value}"
        columns += [
            f"sum(f.{kind.value}_sum) AS {name}_sum",
            f"sum(f.{kind.value}_count) AS {name}_count",
            f"max(f.{kind.value}_any) AS {name}_any",
        ]
    return ",\n            ".join(columns)


def _feedback_sql() -> str:
    columns = []
    for kind in FeedbackKind:
        columns += [
            f"sumIf(value, kind = '{kind.value}') AS {kind.value}_sum",
            f"countIf(kind = '{kind.value}') AS {kind.value}_count",
            f"maxIf(value > 0, kind = '{kind.value}') AS {kind.value}_any",
        ]
    joined = ",\n            ".join(columns)
    return f"""
        SELECT request_id,
            {joined}
        FROM (
            SELECT * FROM feedback
            WHERE tenant = {{tenant:String}} AND request_id IN (SELECT request_id FROM assigned)
            LIMIT 1 BY event_id
        )
        GROUP BY request_id"""


def _metric_pair(metric: MetricConfig) -> tuple[str, str]:
    """Return the SQL of a unit's (x, y) for `metric`, over the per-unit columns."""
    column = metric.source_column
    if metric.type is MetricType.BINOMIAL:
        return f"toFloat64({column}_any)", "1.0"
    if metric.type is MetricType.MEAN:
        return f"toFloat64({column}_sum)", "1.0"
    return f"toFloat64({column}_sum)", f"toFloat64({column}_count)"


def _metric_sums_sql(metrics: list[MetricConfig]) -> str:
    columns = []
    for metric in metrics:
        x, y = _metric_pair(metric)
        pure = "arms = 1"
        columns += [
            f"sumIf({x}, {pure}) AS {metric.key}__x",
            f"sumIf({x} * {x}, {pure}) AS {metric.key}__xx",
            f"sumIf({y}, {pure}) AS {metric.key}__y",
            f"sumIf({y} * {y}, {pure}) AS {metric.key}__yy",
            f"sumIf({x} * {y}, {pure}) AS {metric.key}__xy",
        ]
    return ",\n    ".join(columns)


def arm_sums_sql(metrics: list[MetricConfig], time_condition: str) -> str:
    """Return the query of one row per arm: variant, units, mixed units, then five sums per metric in order."""
    return f"""
WITH
assigned AS (
    SELECT request_id,
        any(JSONExtractString(payload, 'variant', 'key')) AS variant,
        any(JSONExtractString(payload, 'hash_attribute')) AS hash_attribute
    FROM events
    WHERE tenant = {{tenant:String}} AND type = '{EventType.ASSIGNED.value}'
      AND JSONExtractString(payload, 'experiment_key') = {{experiment:String}}{time_condition}
    GROUP BY request_id
),
user_ids AS (
    SELECT request_id, any(JSONExtractString(payload, 'request', 'user_id')) AS user_id
    FROM events
    WHERE tenant = {{tenant:String}} AND type = '{EventType.ACCEPTED.value}'
      AND request_id IN (SELECT request_id FROM assigned)
    GROUP BY request_id
),
request_units AS (
    SELECT a.request_id AS request_id, a.variant AS variant,
        if(a.hash_attribute = 'user_id' AND u.user_id != '', u.user_id, a.request_id) AS unit
    FROM assigned AS a LEFT JOIN user_ids AS u ON a.request_id = u.request_id
),
request_values AS ({_request_values_sql()}
),
feedback_values AS ({_feedback_sql()}
),
forced_units AS (
    SELECT DISTINCT unit FROM exposures
    WHERE tenant = {{tenant:String}} AND experiment_key = {{experiment:String}} AND source = 'forced'
),
units AS (
    SELECT ru.unit AS unit, any(ru.variant) AS variant, uniqExact(ru.variant) AS arms,
            {_unit_columns_sql()}
    FROM request_units AS ru
    LEFT JOIN request_values AS r ON ru.request_id = r.request_id
    LEFT JOIN feedback_values AS f ON ru.request_id = f.request_id
    WHERE ru.unit NOT IN (SELECT unit FROM forced_units)
    GROUP BY ru.unit
)
SELECT variant, countIf(arms = 1) AS units, countIf(arms > 1) AS mixed_units,
    {_metric_sums_sql(metrics)}
FROM units
GROUP BY variant
ORDER BY variant
"""


_EXPOSURES_SQL = """
SELECT variant_key, uniqExact(unit) AS units, count() AS exposures
FROM (
    SELECT * FROM exposures
    WHERE tenant = {tenant:String} AND experiment_key = {experiment:String} AND source != 'forced'TIME_CONDITION
    LIMIT 1 BY event_id
)
GROUP BY variant_key
ORDER BY variant_key
"""


def _time_condition(since: datetime | None, until: datetime | None) -> str:
    condition = ""
    if since is not None:
        condition += " AND ts >= {since:DateTime64(6, 'UTC')}"
    if until is not None:
        condition += " AND ts < {until:DateTime64(6, 'UTC')}"
    return condition


def _parameters(
    tenant: str, experiment: str, since: datetime | None, until: datetime | None, prices: PriceTable
) -> dict[str, Any]:
    models = sorted(prices.models)
    parameters: dict[str, Any] = {
        "tenant": tenant,
        "experiment": experiment,
        "price_models": models,
        "prompt_prices": [prices.models[model].prompt_usd_per_1m_tokens for model in models],
        "completion_prices": [prices.models[model].completion_usd_per_1m_tokens for model in models],
        "default_prompt_price": prices.default.prompt_usd_per_1m_tokens,
        "default_completion_price": prices.default.completion_usd_per_1m_tokens,
        "tokens_per_price_unit": float(TOKENS_PER_PRICE_UNIT),
    }
    if since is not None:
        parameters["since"] = since.strftime(_TIMESTAMP_FORMAT)
    if until is not None:
        parameters["until"] = until.strftime(_TIMESTAMP_FORMAT)
    return parameters


async def read_arms(
    store: StoreClient,
    *,
    tenant: str,
    experiment: str,
    metrics: list[MetricConfig],
    prices: PriceTable,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ArmData]:
    """Return every arm of `experiment` that has units or exposures in the tenant's rows over [since, until), by variant key."""
    condition = _time_condition(since, until)
    parameters = _parameters(tenant, experiment, since, until, prices)
    sums = await store.query_all(arm_sums_sql(metrics, condition), parameters)
    exposures = await store.query_all(_EXPOSURES_SQL.replace("TIME_CONDITION", condition), parameters)
    exposed = {str(row[0]): (int(row[1]), int(row[2])) for row in exposures}
    arms = [_arm(row, metrics, exposed) for row in sums]
    seen = {arm.variant for arm in arms}
    arms += [ArmData(variant, 0, 0, units, count) for variant, (units, count) in exposed.items() if variant not in seen]
    return sorted(arms, key=lambda arm: arm.variant)


def _arm(row: list[Any], metrics: list[MetricConfig], exposed: dict[str, tuple[int, int]]) -> ArmData:
    variant, units, mixed_units = str(row[0]), int(row[1]), int(row[2])
    exposure_units, exposures = exposed.get(variant, (0, 0))
    sums = {}
    for index, metric in enumerate(metrics):
        start = 3 + 5 * index
        sum_x, sum_xx, sum_y, sum_yy, sum_xy = (float(value or 0.0) for value in row[start : start + 5])
        sums[metric.key] = MetricSums(units, sum_x, sum_xx, sum_y, sum_yy, sum_xy)
    return ArmData(variant, units, mixed_units, exposure_units, exposures, sums)
