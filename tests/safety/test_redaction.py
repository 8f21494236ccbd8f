"""Screening with the PII scanner: the forwarded request is redacted, the route picks the chain, logs hold no value."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from services.safety.screening import Screener
from shared.events import ChatMessage, EventType, Verdict
from shared.scanning import ChainsByProfile, build_input_chains, parse_policy
from tests.safety.support import accepted, user

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"

PII_POLICY = {
    "input": [{"type": "PII", "options": {"entities": {"EMAIL": "redact", "CREDIT_CARD": "block"}}}],
    "routes": {"/v1/chat/completions": {"input": [{"type": "PII", "options": {"entities": {"EMAIL": "block"}}}]}},
}


@pytest.fixture(scope="module")
def chains() -> ChainsByProfile:
    return build_input_chains(parse_policy(PII_POLICY, source="pii-test-policy"))


async def test_email_forwarded_redacted(chains: ChainsByProfile) -> None:
    system = ChatMessage(role="system", content="Reply to\nthe sender.")
    envelope = accepted(system, user(f"Write to {EMAIL}\nabout the feast"))

    event = await Screener(chains).screen(envelope, envelope.parsed_payload())

    screened = event.parsed_payload()
    assert event.type is EventType.SCREENED
    assert screened.verdict is Verdict.PASSED
    assert [message.content for message in screened.request.messages] == [
        "Reply to\nthe sender.",
        "Write to [EMAIL]\nabout the feast",
    ]


async def test_unchanged_request_forwarded_as_is(chains: ChainsByProfile) -> None:
    envelope = accepted(user("What rhymes with orange?"))

    screened = (await Screener(chains).screen(envelope, envelope.parsed_payload())).parsed_payload()

    assert screened.request == envelope.parsed_payload().request


async def test_blocked_entity_blocks(chains: ChainsByProfile) -> None:
    envelope = accepted(user(f"Charge {CARD}"))

    screened = (await Screener(chains).screen(envelope, envelope.parsed_payload())).parsed_payload()

    assert screened.verdict is Verdict.BLOCKED
    assert screened.blocked_by == "PII"
    assert CARD not in screened.request.messages[0].content


async def test_route_override_applies(chains: ChainsByProfile) -> None:
    envelope = accepted(user(f"Write to {EMAIL}")).model_copy(update={"route": "/v1/chat/completions"})

    screened = (await Screener(chains).screen(envelope, envelope.parsed_payload())).parsed_payload()

    assert screened.verdict is Verdict.BLOCKED


async def test_logs_hold_no_value(chains: ChainsByProfile) -> None:
    envelope = accepted(user(f"Write to {EMAIL} and charge {CARD}"))

    with capture_logs() as logs:
        await Screener(chains).screen(envelope, envelope.parsed_payload())

    assert logs
    for entry in logs:
        assert EMAIL not in repr(entry)
        assert CARD not in repr(entry)
