"""Summaries of one experiment arm for each metric type, computed over units.

The unit is the randomization unit (a user, or the request itself when the
request has no user), so each unit contributes one observation and units are
independent. A summary holds only what its test needs. It is built from
per-unit numpy arrays, or from the sums n, Σx, Σx², Σy, Σy² and Σxy that the
store computes per arm. There x is the unit's value (the numerator of a
ratio) and y its count (the denominator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.experiment_analysis.errors import InsufficientDataError

# A sample variance (ddof=1) needs two units.
MIN_UNITS_FOR_VARIANCE = 2

# Σx² - (Σx)²/n loses digits to cancellation when the values are large and
# alike, so a result within this fraction of Σx² of zero is rounding (of
# constant values, or of sums that are consistent) and counts as zero.
_CANCELLATION_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class BinomialSummary:
    """An arm's units and how many of them had the outcome (converted, rated thumbs-up)."""

    units: int
    successes: int

    def __post_init__(self) -> None:
        _check_count("units", self.units)
        _check_count("successes", self.successes)
        if self.successes > self.units:
            raise ValueError(
                f"successes is {self.successes}, more than units ({self.units}): "
                "each unit counts as a success at most once"
            )

    @classmethod
    def from_outcomes(cls, outcomes: np.ndarray) -> BinomialSummary:
        """Summarize one 0/1 (or boolean) outcome per unit. Raises ValueError for any other value."""
        values = _as_vector("outcomes", outcomes)
        if not np.isin(values, (0, 1)).all():
            raise ValueError("outcomes must be 0 or 1 (or booleans), one per unit")
        return cls(units=len(values), successes=int(values.sum()))


@dataclass(frozen=True, slots=True)
class MeanSummary:
    """An arm's units, the mean of their values, and the sample variance (ddof=1) of those values."""

    units: int
    mean: float
    variance: float

    def __post_init__(self) -> None:
        _check_enough_units(self.units)
        _check_finite("mean", self.mean)
        _check_variance("variance", self.variance)

    @classmethod
    def from_values(cls, values: np.ndarray) -> MeanSummary:
        """Summarize one value per unit. Raises InsufficientDataError for fewer than 2 values."""
        vector = _as_vector("values", values)
        _check_enough_units(len(vector))
        return cls(units=len(vector), mean=float(vector.mean()), variance=_sample_variance(vector))

    @classmethod
    def from_sums(cls, units: int, sum_x: float, sum_xx: float) -> MeanSummary:
        """Summarize an arm from n, Σx and Σx² of its unit values."""
        _check_enough_units(units)
        return cls(units=units, mean=sum_x / units, variance=_sample_covariance(units, sum_x, sum_x, sum_xx, "sum_xx"))


@dataclass(frozen=True, slots=True)
class RatioSummary:
    """An arm's units, and the means, sample variances (ddof=1) and covariance of their numerators and denominators.

    The metric is mean numerator over mean denominator (latency per request:
    the units' total latency over their request count), not the mean of the
    per-unit ratios, so a unit weighs by its denominator.
    """

    units: int
    numerator_mean: float
    denominator_mean: float
    numerator_variance: float
    denominator_variance: float
    covariance: float

    def __post_init__(self) -> None:
        _check_enough_units(self.units)
        _check_finite("numerator_mean", self.numerator_mean)
        _check_finite("denominator_mean", self.denominator_mean)
        _check_variance("numerator_variance", self.numerator_variance)
        _check_variance("denominator_variance", self.denominator_variance)
        _check_covariance(self.covariance, self.numerator_variance, self.denominator_variance)

    @classmethod
    def from_values(cls, numerators: np.ndarray, denominators: np.ndarray) -> RatioSummary:
        """Summarize one (numerator, denominator) pair per unit. Raises ValueError when the lengths differ."""
        x = _as_vector("numerators", numerators)
        y = _as_vector("denominators", denominators)
        if len(x) != len(y):
            raise ValueError(
                f"numerators has {len(x)} values but denominators has {len(y)}: pass one pair per unit"
            )
        _check_enough_units(len(x))
        numerator_variance, denominator_variance = _sample_variance(x), _sample_variance(y)
        covariance = 0.0 if 0.0 in (numerator_variance, denominator_variance) else float(np.cov(x, y, ddof=1)[0, 1])
        return cls(len(x), float(x.mean()), float(y.mean()), numerator_variance, denominator_variance, covariance)

    @classmethod
    def from_sums(
        cls, units: int, sum_x: float, sum_xx: float, sum_y: float, sum_yy: float, sum_xy: float
    ) -> RatioSummary:
        """Summarize an arm from n, Σx, Σx², Σy, Σy² and Σxy of its units' numerators x and denominators y."""
        _check_enough_units(units)
        numerator_variance = _sample_covariance(units, sum_x, sum_x, sum_xx, "sum_xx")
        denominator_variance = _sample_covariance(units, sum_y, sum_y, sum_yy, "sum_yy")
        covariance = (sum_xy - sum_x * sum_y / units) / (units - 1)

        # Rounding in Σxy - ΣxΣy/n can push the covariance just past the
        # Cauchy–Schwarz bound, for example when every numerator is equal and
        # its variance rounds to 0, so an excess within rounding is clamped.
        bound = math.sqrt(numerator_variance * denominator_variance)
        rounding = _CANCELLATION_TOLERANCE * abs(sum_xy) / (units - 1)
        if bound < abs(covariance) <= bound + rounding:
            covariance = math.copysign(bound, covariance)
        return cls(units, sum_x / units, sum_y / units, numerator_variance, denominator_variance, covariance)


def _as_vector(name: str, values: np.ndarray) -> np.ndarray:
    vector = np.asarray(values, dtype=float)
    if vector.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per unit), got shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError(f"{name} contains NaN or infinite values: drop or fill them before summarizing")
    return vector


def _sample_variance(vector: np.ndarray) -> float:
    """Return the sample variance (ddof=1), exactly 0 for equal values, where the rounded mean would leave a trace."""
    if np.ptp(vector) == 0:
        return 0.0
    return float(vector.var(ddof=1))


def _sample_covariance(units: int, sum_a: float, sum_b: float, sum_ab: float, name: str) -> float:
    """Return (Σab - ΣaΣb/n) / (n - 1), the sample variance when a and b are the same values."""
    centered = sum_ab - sum_a * sum_b / units
    if abs(centered) <= _CANCELLATION_TOLERANCE * abs(sum_ab):
        return 0.0
    if centered < 0:
        raise ValueError(
            f"{name} is {sum_ab!r}, less than the square of the sum over the units "
            f"({sum_a * sum_b / units!r}): the sums do not come from one set of values"
        )
    return centered / (units - 1)


def _check_count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} is {value}, but a count must be 0 or more")


def _check_enough_units(units: int) -> None:
    _check_count("units", units)
    if units < MIN_UNITS_FOR_VARIANCE:
        raise InsufficientDataError(
            f"the arm has {units} unit(s), but a sample variance needs at least {MIN_UNITS_FOR_VARIANCE}"
        )


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} is {value!r}, but it must be a finite number")


def _check_variance(name: str, value: float) -> None:
    _check_finite(name, value)
    if value < 0:
        raise ValueError(f"{name} is {value!r}, but a variance must be 0 or more")


def _check_covariance(covariance: float, numerator_variance: float, denominator_variance: float) -> None:
    """Reject a covariance larger than the Cauchy–Schwarz bound, which no data can produce."""
    _check_finite("covariance", covariance)
    bound = math.sqrt(numerator_variance * denominator_variance)
    if abs(covariance) > bound * (1 + _CANCELLATION_TOLERANCE):
        raise ValueError(
            f"covariance is {covariance!r}, but its size cannot exceed the square root of the product "
            f"of the variances ({bound!r})"
        )
