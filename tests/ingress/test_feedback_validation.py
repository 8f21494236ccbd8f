"""The feedback body's rules, the idempotency key's resolution and the feedback event id, without servers."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.ingress.errors import InvalidRequestError
from services.ingress.feedback import feedback_event_id
from services.ingress.feedback_validation import (
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
    FeedbackBody,
    FeedbackMessage,
    resolve_idempotency_key,
)

VALID = {"request_id": "r1", "kind": "rating", "value": 4}


def _invalid_fields(body: dict[str, Any], model: type[FeedbackBody] = FeedbackBody) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [".".join(str(part) for part in error["loc"]) for error in caught.value.errors()]


@pytest.mark.parametrize(
    ("kind", "value"),
    [("rating", 1), ("rating", 5), ("rating", 4.5), ("thumbs", 0), ("thumbs", 1), ("conversion", 1), ("value", -12.75)],
)
def test_allowed_values_pass(kind: str, value: float) -> None:
    body = FeedbackBody.model_validate({**VALID, "kind": kind, "value": value})

    assert body.value == value


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("rating", 0),
        ("rating", 5.5),
        ("thumbs", 0.5),
        ("thumbs", 2),
        ("conversion", -1),
        ("value", float("nan")),
        ("value", float("inf")),
        ("thumbs", True),
        ("rating", "4"),
    ],
)
def test_invalid_value_names_value(kind: str, value: Any) -> None:
    assert _invalid_fields({**VALID, "kind": kind, "value": value}) == ["value"]


def test_unknown_kind_names_kind() -> None:
    assert _invalid_fields({**VALID, "kind": "stars"}) == ["kind"]


def test_missing_request_id_named() -> None:
    assert _invalid_fields({"kind": "thumbs", "value": 1}) == ["request_id"]


def test_long_request_id_named() -> None:
    assert _invalid_fields({**VALID, "request_id": "r" * 65}) == ["request_id"]


def test_unknown_field_named() -> None:
    assert _invalid_fields({**VALID, "score": 3}) == ["score"]


def test_too_many_metadata_keys() -> None:
    metadata = {f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}

    assert _invalid_fields({**VALID, "metadata": metadata}) == ["metadata"]


def test_long_metadata_key() -> None:
    assert _invalid_fields({**VALID, "metadata": {"k" * 65: "v"}}) == ["metadata"]


def test_long_metadata_value() -> None:
    assert _invalid_fields({**VALID, "metadata": {"page": "v" * (MAX_METADATA_VALUE_CHARS + 1)}}) == ["metadata"]


def test_non_string_metadata_value() -> None:
    assert _invalid_fields({**VALID, "metadata": {"page": 3}}) == ["metadata.page"]


def test_metadata_at_limits_passes() -> None:
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * MAX_METADATA_VALUE_CHARS for i in range(MAX_METADATA_KEYS)}

    assert FeedbackBody.model_validate({**VALID, "metadata": metadata}).metadata == metadata


def test_body_key_with_space_named() -> None:
    assert _invalid_fields({**VALID, "idempotency_key": "a b"}) == ["idempotency_key"]


def test_message_requires_tenant() -> None:
    assert _invalid_fields({**VALID, "idempotency_key": "k1"}, FeedbackMessage) == ["tenant"]


def test_message_requires_idempotency_key() -> None:
    assert _invalid_fields({**VALID, "tenant": "acme"}, FeedbackMessage) == ["idempotency_key"]


def test_message_rejects_invalid_tenant() -> None:
    assert _invalid_fields({**VALID, "tenant": "Acme.*", "idempotency_key": "k1"}, FeedbackMessage) == ["tenant"]


def test_digest_same_for_int_and_float() -> None:
    assert FeedbackBody.model_validate({**VALID, "value": 4}).digest() == FeedbackBody.model_validate({**VALID, "value": 4.0}).digest()


def test_digest_ignores_idempotency_key() -> None:
    first = FeedbackBody.model_validate({**VALID, "idempotency_key": "k1"})
    second = FeedbackBody.model_validate({**VALID, "idempotency_key": "k2"})

    assert first.digest() == second.digest()


def test_digest_differs_by_value() -> None:
    assert FeedbackBody.model_validate(VALID).digest() != FeedbackBody.model_validate({**VALID, "value": 3}).digest()


def test_missing_key_names_both_places() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve_idempotency_key(None, None)

    assert caught.value.code == "missing_idempotency_key"
    assert "Idempotency-Key header" in caught.value.message
    assert "idempotency_key body field" in caught.value.message


def test_header_key_used() -> None:
    assert resolve_idempotency_key("k1", None) == "k1"


def test_body_key_used() -> None:
    assert resolve_idempotency_key(None, "k1") == "k1"


def test_same_key_in_both_places_used() -> None:
    assert resolve_idempotency_key("k1", "k1") == "k1"


def test_conflicting_keys_rejected() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve_idempotency_key("k1", "k2")

    assert caught.value.code == "conflicting_idempotency_key"


def test_invalid_header_key_rejected() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve_idempotency_key("k" * 256, None)

    assert caught.value.field == "Idempotency-Key"


def test_event_id_is_deterministic() -> None:
    assert feedback_event_id("acme", "r1", "k1") == feedback_event_id("acme", "r1", "k1")


@pytest.mark.parametrize(("tenant", "request_id", "key"), [("globex", "r1", "k1"), ("acme", "r2", "k1"), ("acme", "r1", "k2")])
def test_event_id_differs_by_each_part(tenant: str, request_id: str, key: str) -> None:
    assert feedback_event_id(tenant, request_id, key) != feedback_event_id("acme", "r1", "k1")
