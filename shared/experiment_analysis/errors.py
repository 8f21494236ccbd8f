"""The error that the experiment statistics raise when valid data cannot support an estimate."""

from __future__ import annotations


class InsufficientDataError(ValueError):
    """Valid data that is too thin for the statistic: too few units, or a denominator whose mean is zero.

    It subclasses ValueError, so a caller that handles every bad input alike
    can catch that. A report catches this class to show the arm without the
    estimate, while other ValueErrors mean invalid input (negative counts,
    mismatched arrays) and are bugs upstream.
    """
