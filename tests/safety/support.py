"""Building `request.accepted` envelopes for the safety tests."""

from __future__ import annotations

from shared.events import AcceptedPayload, ChatMessage, Envelope, EventType, RequestSpec
from tests.support.envelopes import new_request_envelope

TENANT = "acme"


def accepted(*messages: ChatMessage, deadline_in_s: float = 120.0) -> Envelope:
    request = RequestSpec(messages=list(messages), user_id="alice")
    payload = AcceptedPayload(request=request, prompt_chars=sum(len(message.content) for message in messages))
    return new_request_envelope(EventType.ACCEPTED, payload, tenant=TENANT, deadline_in_s=deadline_in_s)


def user(content: str) -> ChatMessage:
    return ChatMessage(role="user", content=content)
