"""Building `request.accepted` envelopes for the safety tests."""

from __future__ import annotations

import uuid
from datetime import timedelta

from shared.events import AcceptedPayload, ChatMessage, Envelope, EventType, RequestSpec, new_envelope, utc_now

TENANT = "acme"


def accepted(*messages: ChatMessage, deadline_in_s: float = 120.0) -> Envelope:
    request = RequestSpec(messages=list(messages), user_id="alice")
    payload = AcceptedPayload(request=request, prompt_chars=sum(len(message.content) for message in messages))
    return new_envelope(
        EventType.ACCEPTED,
        request_id=str(uuid.uuid4()),
        tenant=TENANT,
        payload=payload,
        deadline=utc_now() + timedelta(seconds=deadline_in_s),
    )


def user(content: str) -> ChatMessage:
    return ChatMessage(role="user", content=content)
