"""Building the envelope of a new request for tests."""

from __future__ import annotations

import uuid
from datetime import timedelta

from pydantic import BaseModel

from shared.events import Envelope, EventType, new_envelope, utc_now


def new_request_envelope(
    event_type: EventType, payload: BaseModel, *, tenant: str, deadline_in_s: float | None
) -> Envelope:
    """Build an event of a new request with a random id and a deadline `deadline_in_s` seconds from now.

    A negative value makes the envelope late on arrival. None leaves the deadline unset.
    """
    deadline = None if deadline_in_s is None else utc_now() + timedelta(seconds=deadline_in_s)
    return new_envelope(event_type, request_id=str(uuid.uuid4()), tenant=tenant, payload=payload, deadline=deadline)
