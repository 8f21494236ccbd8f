"""The OpenAI request bodies, their mapping to a `RequestSpec`, and final entries turned into outcomes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.events import ChatMessage, GenerationParams

from services.ingress.openai_errors import OpenAIError
from services.ingress.openai_models import ChatCompletionBody, CompletionBody, check_supported, request_spec
from services.ingress.openai_responses import ChatFormat, Finish, TextFormat, final_outcome

USAGE = {"prompt_tokens": 7, "completion_tokens": 5}


def _chat(**fields: Any) -> ChatCompletionBody:
    return ChatCompletionBody.model_validate({"model": "auto", "messages": [{"role": "user", "content": "Hail"}], **fields})


def _rejection(body: ChatCompletionBody | CompletionBody) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        check_supported(body)
        request_spec(body)
    return caught.value


def test_chat_maps_sampling_parameters() -> None:
    body = _chat(max_completion_tokens=20, temperature=0.3, top_p=0.9, stop="\n", user="alice", metadata={"team": "a"})

    spec = request_spec(body)

    assert spec.params == GenerationParams(max_new_tokens=20, temperature=0.3, top_p=0.9, stop=["\n"])
    assert spec.user_id == "alice"
    assert spec.metadata == {"team": "a"}
    assert spec.model == "auto"


def test_max_tokens_maps_to_max_new_tokens() -> None:
    assert request_spec(_chat(max_tokens=12)).params.max_new_tokens == 12


def test_developer_role_becomes_system() -> None:
    body = _chat(messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hail"}])

    assert request_spec(body).messages[0] == ChatMessage(role="system", content="Be brief.")


def test_text_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Speak"}, {"type": "text", "text": "of kings"}]

    body = _chat(messages=[{"role": "user", "content": parts}])

    assert request_spec(body).messages[0].content == "Speak\nof kings"


def test_image_part_is_rejected() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]

    with pytest.raises(ValidationError, match="image_url"):
        _chat(messages=[{"role": "user", "content": parts}])


def test_tool_role_is_rejected() -> None:
    with pytest.raises(ValidationError):
        _chat(messages=[{"role": "tool", "content": "42", "tool_call_id": "call_1"}])


def test_completion_prompt_becomes_user_message() -> None:
    body = CompletionBody.model_validate({"model": "control", "prompt": ["Once upon a time"], "max_tokens": 8})

    spec = request_spec(body)

    assert spec.messages == [ChatMessage(role="user", content="Once upon a time")]
    assert spec.params.max_new_tokens == 8
    assert spec.model == "control"


def test_several_prompts_are_rejected() -> None:
    with pytest.raises(ValidationError, match="one prompt"):
        CompletionBody.model_validate({"model": "auto", "prompt": ["a", "b"]})


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 2), ("tools", [{"type": "function", "function": {"name": "f"}}]), ("logprobs", True), ("seed", 1), ("presence_penalty", 0.5)],
)
def test_unsupported_value_is_rejected(field: str, value: Any) -> None:
    error = _rejection(_chat(**{field: value}))

    assert error.status_code == 400
    assert error.code == "unsupported_parameter"
    assert error.param == field


@pytest.mark.parametrize(("field", "value"), [("n", 1), ("logprobs", False), ("tools", []), ("presence_penalty", 0), ("seed", None)])
def test_neutral_value_is_accepted(field: str, value: Any) -> None:
    check_supported(_chat(**{field: value}))


def test_unknown_parameter_is_rejected() -> None:
    error = _rejection(_chat(temprature=0.5))

    assert error.code == "unknown_parameter"
    assert error.param == "temprature"


def test_stream_options_need_stream() -> None:
    error = _rejection(_chat(stream_options={"include_usage": True}))

    assert error.param == "stream_options"


def test_out_of_range_value_names_openai_parameter() -> None:
    error = _rejection(_chat(max_completion_tokens=100_000))

    assert error.status_code == 400
    assert error.param == "max_completion_tokens"
    assert "100000" in error.message


def test_both_length_limits_are_rejected() -> None:
    error = _rejection(_chat(max_tokens=5, max_completion_tokens=5))

    assert error.param == "max_tokens"


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        ({"status": "completed", "finish_reason": "eos_token", "usage": USAGE}, "stop"),
        ({"status": "completed", "finish_reason": "stop_sequence", "usage": USAGE}, "stop"),
        ({"status": "completed", "finish_reason": "length", "usage": USAGE}, "length"),
        ({"status": "blocked", "stage": "output", "finish_reason": "moderation", "usage": USAGE}, "content_filter"),
    ],
)
def test_final_entry_finish_reason(final: dict[str, Any], expected: str) -> None:
    outcome = final_outcome(final, "messages")

    assert outcome == Finish(expected, {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12})


def test_blocked_prompt_is_400_naming_scanner() -> None:
    final = {"status": "blocked", "stage": "input", "blocked_by": "Secrets", "reason": "the text contains a secret"}

    outcome = final_outcome(final, "prompt")

    assert isinstance(outcome, OpenAIError)
    assert outcome.status_code == 400
    assert outcome.code == "content_blocked"
    assert outcome.param == "prompt"
    assert "Secrets" in outcome.message


@pytest.mark.parametrize(
    ("final", "status_code"),
    [
        ({"status": "failed", "error_code": "backend_rejected", "message": "too long"}, 400),
        ({"status": "failed", "error_code": "backend_unavailable", "message": "refused"}, 503),
        ({"status": "failed", "error_code": "scanner_failed", "message": "crashed"}, 500),
        ({"status": "cancelled", "reason": "client_request"}, 499),
        ({"status": "expired"}, 504),
    ],
)
def test_ended_request_is_http_error(final: dict[str, Any], status_code: int) -> None:
    outcome = final_outcome(final, "messages")

    assert isinstance(outcome, OpenAIError)
    assert outcome.status_code == status_code


def test_chat_stream_chunks() -> None:
    output = ChatFormat("r1", "auto", 1_700_000_000)

    opening = output.chunk(output.opening_choice() or {})
    text = output.chunk(output.text_choice("Hail"))
    finish = output.chunk(output.finish_choice("stop"))

    assert opening["id"] == "chatcmpl-r1"
    assert opening["object"] == "chat.completion.chunk"
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text["choices"][0]["delta"] == {"content": "Hail"}
    assert finish["choices"][0]["finish_reason"] == "stop"


def test_text_completion_response() -> None:
    output = TextFormat("r2", "default", 1_700_000_000)

    body = output.response("Once", Finish("length", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}))

    assert body["id"] == "cmpl-r2"
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Once"
    assert body["usage"]["total_tokens"] == 2
