"""Applying the policy's storage modes to the prompt and output texts of an event before it is stored.

The policy's `storage` settings, with their overrides per tenant and route,
say whether ClickHouse keeps a text raw, redacted, hashed or not at all
(see `shared.scanning.policy.StorageMode`). Telemetry is the one writer of
the `events` table, so applying the modes here keeps every raw value that
the policy forbids out of ClickHouse, whichever stage published it.

The texts are the messages of `request.accepted`'s request (the one stored
copy of the prompt) and the `text` of `generation.completed` and
`output.delivered`. Other payloads carry no prompt or output text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from shared.events import EventType
from shared.scanning.pii import PiiDetector, redact
from shared.scanning.policy import Policy, StorageMode, StorageOptions

_OUTPUT_TEXT_EVENTS = frozenset({EventType.COMPLETED, EventType.DELIVERED})


class TextStorage:
    """The storage modes of one policy for every tenant and route profile, resolved once.

    Thread-safe after construction: it keeps no state between calls.
    """

    def __init__(self, policy: Policy, detector: PiiDetector) -> None:
        self._policy = policy
        self._storage = {key: policy.resolve(*key).storage for key in policy.profiles()}
        self._transforms: dict[StorageMode, Callable[[str], str]] = {
            "raw": lambda text: text,
            "redacted": lambda text: redact(text, detector.find(text)),
            "hashed": lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "none": lambda text: "",
        }

    def storage_for(self, tenant: str, route: str | None) -> StorageOptions:
        """Return the storage modes for events of `tenant` on `route`."""
        return self._storage[self._policy.profile(tenant, route)]

    def apply(
        self, event_type: EventType, tenant: str, route: str | None, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """Return `payload` with the storage modes applied to its texts; a payload without texts is returned as is.

        Values may be `msgspec.Raw` JSON (the hot path) or Python values.
        """
        storage = self.storage_for(tenant, route)
        if event_type is EventType.ACCEPTED and storage.prompt != "raw" and "request" in payload:
            request = _decoded(payload["request"])
            for message in request.get("messages", []):
                message["content"] = self._transforms[storage.prompt](message["content"])
            return {**payload, "request": request}
        if event_type in _OUTPUT_TEXT_EVENTS and storage.output != "raw" and "text" in payload:
            return {**payload, "text": self._transforms[storage.output](_decoded(payload["text"]))}
        return payload


def _decoded(value: Any) -> Any:
    if isinstance(value, msgspec.Raw):
        return msgspec.json.decode(value)
    return value
