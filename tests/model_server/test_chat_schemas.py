from __future__ import annotations

import pytest

from services.model_server.chat_schemas import ChatRequest, render_prompt, to_sampling_params
from services.model_server.errors import RequestValidationFailed


def _request(**fields) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": "Speak, speak."}], **fields)


def test_prompt_uses_chat_template(engine) -> None:
    request = ChatRequest(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Speak, speak."}]
    )

    ids = render_prompt(request, engine)

    assert engine.tokenizer.decode(ids) == "CHORUS:\nBe brief.\n\nROMEO:\nSpeak, speak.\n\nJULIET:\n"


def test_text_parts_are_joined(engine) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": [{"type": "text", "text": "Speak, "}, {"type": "text", "text": "speak."}]}]
    )

    assert render_prompt(request, engine) == render_prompt(_request(), engine)


def test_image_part_rejected(engine) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    )

    with pytest.raises(RequestValidationFailed, match=r"`messages\[0\].content` contains an image"):
        render_prompt(request, engine)


def test_unknown_role_rejected(engine) -> None:
    request = ChatRequest(messages=[{"role": "narrator", "content": "Exeunt."}])

    with pytest.raises(RequestValidationFailed, match="unsupported message role narrator"):
        render_prompt(request, engine)


def test_empty_messages_rejected(engine) -> None:
    with pytest.raises(RequestValidationFailed, match="`messages` must contain"):
        render_prompt(ChatRequest(messages=[]), engine)


def test_temperature_zero_is_greedy(engine) -> None:
    params = to_sampling_params(_request(temperature=0.0), 10, engine.limits)

    assert params.do_sample is False


def test_default_temperature_samples(engine) -> None:
    params = to_sampling_params(_request(), 10, engine.limits)

    assert params.do_sample is True
    assert params.temperature == 1.0


def test_missing_max_tokens_fills_context(engine) -> None:
    params = to_sampling_params(_request(), 10, engine.limits)

    assert params.max_new_tokens == engine.limits.max_total_tokens - 10


def test_max_completion_tokens_accepted(engine) -> None:
    assert to_sampling_params(_request(max_completion_tokens=7), 10, engine.limits).max_new_tokens == 7


def test_single_stop_string_accepted(engine) -> None:
    assert to_sampling_params(_request(stop="\n\n"), 10, engine.limits).stop == ("\n\n",)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"seed": -3}, "seed"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stop": ["1", "2", "3", "4", "5"]}, "stop"),
    ],
)
def test_invalid_chat_field_named(engine, fields, field_name) -> None:
    with pytest.raises(RequestValidationFailed, match=f"`{field_name}`"):
        to_sampling_params(_request(**fields), 10, engine.limits)
