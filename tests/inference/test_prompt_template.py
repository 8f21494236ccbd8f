"""A variant's prompt template: which message it wraps, and what the backend receives."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from services.inference.prompt_template import apply_prompt_template
from shared.events import AssignedPayload, ChatMessage, EventType, GenerationParams, RequestSpec, VariantSpec
from tests.inference.harness import running_inference, write_backends
from tests.inference.scripted_tgi import ScriptedServer
from tests.support.envelopes import new_request_envelope
from tests.support.jetstream import publish_envelope, wait_for_event

WAIT_S = 60.0
TEMPLATE = "Answer in iambic pentameter, with {braces} kept.\n\n{prompt}"


def _chat() -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content="You are a bard."),
        ChatMessage(role="user", content="Who art thou?"),
        ChatMessage(role="assistant", content="A humble player."),
        ChatMessage(role="user", content="Then play {prompt} for me."),
    ]


def test_template_wraps_last_user_message() -> None:
    messages = apply_prompt_template(_chat(), TEMPLATE)

    assert messages[:3] == _chat()[:3]
    assert messages[3].content == "Answer in iambic pentameter, with {braces} kept.\n\nThen play {prompt} for me."
    assert messages[3].role == "user"


def test_template_wraps_prompt_request() -> None:
    messages = apply_prompt_template([ChatMessage(role="user", content="Speak.")], "<s>{prompt}</s>")

    assert messages == [ChatMessage(role="user", content="<s>Speak.</s>")]


def test_no_template_keeps_messages() -> None:
    assert apply_prompt_template(_chat(), None) == _chat()


def test_no_user_message_kept() -> None:
    system_only = [ChatMessage(role="system", content="Be brief.")]

    assert apply_prompt_template(system_only, TEMPLATE) == system_only


def test_caller_messages_not_changed() -> None:
    messages = _chat()

    apply_prompt_template(messages, TEMPLATE)

    assert messages == _chat()


@pytest.mark.nats
@pytest.mark.redis
async def test_backend_receives_templated_prompt(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, tmp_path: Path, scripted: ScriptedServer
) -> None:
    variant = VariantSpec(
        key="verse", backend="scripted", prompt_template="Verse: {prompt}", params=GenerationParams(max_new_tokens=8)
    )
    request = RequestSpec(messages=[ChatMessage(role="user", content="Good morrow.")])
    payload = AssignedPayload(request=request, experiment_key=None, variant=variant, hash_attribute="request_id")
    assigned = new_request_envelope(EventType.ASSIGNED, payload, tenant="acme", deadline_in_s=120.0)
    backends_file = write_backends(tmp_path, "http://127.0.0.1:9", scripted.url)

    async with running_inference(bus_url, redis_url, backends_file):
        await publish_envelope(jetstream, assigned)
        await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)

    assert scripted.bodies[0]["messages"] == [{"role": "user", "content": "Verse: Good morrow."}]
