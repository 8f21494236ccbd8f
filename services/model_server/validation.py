"""Range checks shared by the TGI and chat routes, raising TGI-style validation errors that name the field."""

from __future__ import annotations

from services.model_server.errors import RequestValidationFailed
from services.model_server.engine import ServingLimits

# OpenAI's and TGI's bound for frequency and presence penalties.
MAX_ABS_PENALTY = 2.0


def validation_error(message: str) -> RequestValidationFailed:
    """Return a validation error with TGI's message prefix."""
    return RequestValidationFailed(f"Input validation error: {message}")


def check_positive(name: str, value: float | None) -> None:
    """Require `value` > 0 when given."""
    if value is not None and value <= 0:
        raise validation_error(f"`{name}` must be strictly positive. Given: {value}")


def check_probability(name: str, value: float | None, *, allow_one: bool) -> None:
    """Require 0 < `value` < 1, or <= 1 with `allow_one`, when given."""
    if value is None:
        return
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if value <= 0.0 or not upper_ok:
        bound = "<= 1.0" if allow_one else "< 1.0"
        raise validation_error(f"`{name}` must be > 0.0 and {bound}. Given: {value}")


def check_penalty(name: str, value: float | None) -> None:
    """Require -2 <= `value` <= 2 when given."""
    if value is not None and abs(value) > MAX_ABS_PENALTY:
        raise validation_error(f"`{name}` must be >= -{MAX_ABS_PENALTY} and <= {MAX_ABS_PENALTY}. Given: {value}")


def check_stop(stop: list[str], limits: ServingLimits) -> tuple[str, ...]:
    """Return `stop` as a tuple after checking its count and that no sequence is empty."""
    if len(stop) > limits.max_stop_sequences:
        raise validation_error(f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}")
    if any(sequence == "" for sequence in stop):
        raise validation_error("`stop` sequences must not be empty strings; remove the empty entry")
    return tuple(stop)


def resolve_adapter(name: str | None, base_names: frozenset[str], adapters: frozenset[str], served: str) -> str | None:
    """Return the adapter id `name` selects, or None for the base model (`name` None or one of `base_names`).

    Raises `RequestValidationFailed` for any other name: an unknown adapter is
    an error, never a silent fallback to the base model.
    """
    if name is None or name in base_names:
        return None
    if name in adapters:
        return name
    served_adapters = f"adapters {sorted(adapters)}" if adapters else "no adapters"
    raise RequestValidationFailed(
        f"unknown model or adapter {name!r}; this server serves: {served} ({served_adapters}). "
        f"Send one of {sorted(base_names | adapters)} or omit the field"
    )


def reject_if_set(name: str, value: object, reason: str) -> None:
    """Reject a field this server does not implement when the request sets it."""
    if value not in (None, False):
        raise validation_error(f"`{name}` is not supported by this server: {reason}. Remove the field")
