"""The experiment metrics file (shared/config/metrics.yaml): what each metric observes and how arms are compared on it."""

from __future__ import annotations

import enum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.events import FeedbackKind
from shared.settings import DEFAULT_CONFIG_DIR
from shared.store_client import describe_validation_error

DEFAULT_METRICS_FILE = DEFAULT_CONFIG_DIR / "metrics.yaml"


class MetricsConfigError(ValueError):
    """The metrics file is missing, not YAML, or not a valid metric list. The message names the file and the field."""


class MetricType(str, enum.Enum):
    """The rule that turns a unit's observations into its value, which also picks the statistical test."""

    # 1 when the unit has an observation above 0, else 0: a two-proportion z-test.
    BINOMIAL = "binomial"
    # The sum of the unit's observations, 0 when it has none: Welch's t-test.
    MEAN = "mean"
    # The sum of the unit's observations over their count: the delta method.
    RATIO = "ratio"


class RequestValue(str, enum.Enum):
    """A per-request value that a metric can observe, computed from the request's `request_signals` rows."""

    LATENCY_MS = "latency_ms"
    TTFT_MS = "ttft_ms"
    OUTPUT_TOKENS = "output_tokens"
    COST_USD = "cost_usd"
    OUTPUT_BLOCKED = "output_blocked"
    MODERATION_FLAGGED = "moderation_flagged"
    REFUSAL = "refusal"
    FAILED = "failed"


class MetricConfig(BaseModel):
    """One metric: its observations (a feedback kind or a request value), its type, and which direction is better."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    type: MetricType
    feedback: FeedbackKind | None = None
    request_value: RequestValue | None = None
    higher_is_better: bool = True
    guardrail: bool = False

    @model_validator(mode="after")
    def _check_one_source(self) -> MetricConfig:
        if (self.feedback is None) == (self.request_value is None):
            raise ValueError("set exactly one of feedback (a feedback kind) and request_value (a per-request value)")
        return self

    @property
    def source_column(self) -> str:
        """The name of the per-unit columns that the analysis query computes for this metric's observations."""
        if self.feedback is not None:
            return f"feedback_{self.feedback.value}"
        assert self.request_value is not None
        return f"request_{self.request_value.value}"


class MetricsFile(BaseModel):
    """The contents of metrics.yaml: the metrics in report order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: list[MetricConfig] = Field(min_length=1)

    @field_validator("metrics")
    @classmethod
    def _check_unique_keys(cls, metrics: list[MetricConfig]) -> list[MetricConfig]:
        keys = [metric.key for metric in metrics]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"metric key {duplicates[0]!r} appears more than once, but each key must be unique")
        return metrics


def load_metrics(path: Path = DEFAULT_METRICS_FILE) -> list[MetricConfig]:
    """Read and validate the metrics file. Raises `MetricsConfigError`."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise MetricsConfigError(f"cannot read the metrics file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise MetricsConfigError(f"the metrics file {path} is not valid YAML: {error}") from error
    try:
        return MetricsFile.model_validate(document).metrics
    except ValidationError as error:
        raise MetricsConfigError(f"invalid metrics file {path}: {describe_validation_error(error)}") from error
