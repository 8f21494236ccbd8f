"""The body of a feedback submission and its rules, shared by `POST /v1/feedback` and the feedback subject.

The pydantic models check types, each kind's values and the metadata
limits, so FastAPI and the NATS responder report the same field and
message for the same mistake. `resolve_idempotency_key` then picks the key
from the `Idempotency-Key` header or the body, where exactly one is required.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.api_keys import TENANT_PATTERN
from shared.events import FeedbackKind

from services.ingress.acceptance import MAX_IDEMPOTENCY_KEY_CHARS, check_idempotency_key, is_valid_idempotency_key
from services.ingress.errors import InvalidRequestError

# The ingress issues 32-character hex request ids. The bound only keeps a
# mistaken value, such as a whole response pasted in, out of the queries.
MAX_REQUEST_ID_CHARS = 64
# Metadata travels in every feedback event and fills a Map column of every
# feedback row. So it is sized for a few tags (a page, a locale, a reason
# code), not for free text. The limits allow at most 32 × (64 + 512)
# characters, about 18 KB of ASCII.
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

RATING_MIN = 1.0
RATING_MAX = 5.0
# The kinds whose value is 0 or 1: thumbs (1 up) and conversion (1 converted).
_BINARY_KINDS = frozenset({FeedbackKind.THUMBS, FeedbackKind.CONVERSION})

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_FIELD = "idempotency_key"


def check_value(kind: FeedbackKind, value: float) -> None:
    """Raise `ValueError` unless `value` is allowed for `kind`; the value is already a finite number."""
    if kind is FeedbackKind.RATING and not RATING_MIN <= value <= RATING_MAX:
        raise ValueError(f"a rating must be between {RATING_MIN:g} and {RATING_MAX:g}; received {value:g}")
    if kind in _BINARY_KINDS and value not in (0.0, 1.0):
        meaning = "1 for thumbs up, 0 for thumbs down" if kind is FeedbackKind.THUMBS else "1 converted, 0 not converted"
        raise ValueError(f"{kind.value} must be 0 or 1 ({meaning}); received {value:g}")


def check_metadata(metadata: dict[str, str]) -> None:
    """Raise `ValueError` naming the first key that breaks a metadata limit."""
    if len(metadata) > MAX_METADATA_KEYS:
        raise ValueError(f"metadata has {len(metadata)} keys; the limit is {MAX_METADATA_KEYS}: drop some")
    for key, value in metadata.items():
        if not 1 <= len(key) <= MAX_METADATA_KEY_CHARS:
            raise ValueError(
                f"metadata key {key[:MAX_METADATA_KEY_CHARS]!r} has {len(key)} characters; "
                f"use 1 to {MAX_METADATA_KEY_CHARS}"
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise ValueError(
                f"metadata value of key {key!r} has {len(value)} characters; the limit is {MAX_METADATA_VALUE_CHARS}"
            )


class FeedbackBody(BaseModel):
    """The body of `POST /v1/feedback`: feedback of one kind on one of the caller's requests."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=MAX_REQUEST_ID_CHARS, description="The rated request's id.")
    kind: FeedbackKind
    # Strict, so that `true` or `"1"` is rejected rather than read as 1.
    value: float = Field(
        strict=True,
        allow_inf_nan=False,
        description="rating: 1 to 5; thumbs: 0 or 1 (up); conversion: 0 or 1 (converted); value: any finite number.",
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="Up to 32 string tags.")
    idempotency_key: str | None = Field(default=None, description="Required here or in the Idempotency-Key header.")

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: float, info: ValidationInfo) -> float:
        # `kind` is absent when it failed validation, which is reported on its own.
        kind = info.data.get("kind")
        if kind is not None:
            check_value(kind, value)
        return value

    @field_validator("metadata")
    @classmethod
    def _check_metadata(cls, metadata: dict[str, str]) -> dict[str, str]:
        check_metadata(metadata)
        return metadata

    @field_validator("idempotency_key")
    @classmethod
    def _check_idempotency_key(cls, key: str | None) -> str | None:
        if key is not None and not is_valid_idempotency_key(key):
            raise ValueError(
                f"the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters "
                f"without spaces (received {len(key)} characters); a UUID works"
            )
        return key

    def digest(self) -> str:
        """Return the SHA-256 of the request id, kind, value and metadata, so a repeat with the same key can be compared.

        The idempotency key and the tenant are left out: they are the
        record's key. A value of 1 and 1.0 hash alike, because both are
        stored as the float 1.0.
        """
        fields = {"request_id": self.request_id, "kind": self.kind.value, "value": self.value, "metadata": self.metadata}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class FeedbackMessage(FeedbackBody):
    """A message on the feedback subject: the body plus the tenant, which trusted services on the bus name themselves."""

    tenant: str = Field(description="The tenant whose request is rated.")
    idempotency_key: str = Field(description="Required in the body: the subject reads no Idempotency-Key header.")

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, tenant: str) -> str:
        if not TENANT_PATTERN.match(tenant):
            raise ValueError(
                f"invalid tenant {tenant!r}: use 1 to 63 lowercase letters, digits, '_' and '-', "
                "starting with a letter or digit"
            )
        return tenant


def resolve_idempotency_key(header: str | None, body_key: str | None) -> str:
    """Return the submission's idempotency key from the header or the body.

    Raises `InvalidRequestError` (422) when neither carries one, when the
    two differ, or when the header's key is invalid. The body's key was
    checked with the body.
    """
    if header is None:
        if body_key is None:
            raise InvalidRequestError(
                "missing_idempotency_key",
                f"feedback needs an idempotency key: send the {IDEMPOTENCY_KEY_HEADER} header or the "
                f"{IDEMPOTENCY_KEY_FIELD} body field, such as a UUID that you reuse when you retry",
                field=IDEMPOTENCY_KEY_FIELD,
            )
        return body_key
    if body_key is not None and body_key != header:
        raise InvalidRequestError(
            "conflicting_idempotency_key",
            f"the {IDEMPOTENCY_KEY_HEADER} header and the {IDEMPOTENCY_KEY_FIELD} body field differ; "
            "send the key in one place, or the same key in both",
            field=IDEMPOTENCY_KEY_FIELD,
        )
    check_idempotency_key(header)
    return header
