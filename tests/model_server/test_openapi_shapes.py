"""The model server's replies checked against TGI 3.3's OpenAPI description, with adapters and without."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from shared.settings import REPO_ROOT

SPEC_FILE = REPO_ROOT.parent / "shared" / "reference" / "tgi-openapi.json"
PROMPT = "ROMEO:\n"
DETAILED_PARAMETERS = {
    "max_new_tokens": 6,
    "details": True,
    "decoder_input_details": True,
    "top_n_tokens": 2,
    "do_sample": True,
    "seed": 3,
}


def _json_schema(node: Any) -> Any:
    """Turn an OpenAPI 3.0 schema into JSON Schema: `nullable: true` becomes "or null"."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    if not SPEC_FILE.is_file():
        pytest.skip(f"TGI's OpenAPI description is not at {SPEC_FILE}")
    return _json_schema(json.loads(SPEC_FILE.read_text(encoding="utf-8")))


def _check(spec: dict[str, Any], schema_name: str, instance: Any) -> None:
    """Validate `instance` against `#/components/schemas/<schema_name>` of the spec; raise on a mismatch."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    jsonschema.validate(instance, schema)


def _sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line.removeprefix("data:").strip() for line in response.text.splitlines() if line.startswith("data:")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def test_generate_matches_spec(server_url: str, spec: dict[str, Any]) -> None:
    response = httpx.post(f"{server_url}/generate", json={"inputs": PROMPT, "parameters": DETAILED_PARAMETERS}, timeout=30)

    assert response.status_code == 200
    _check(spec, "GenerateResponse", response.json())


def test_generate_stream_matches_spec(server_url: str, spec: dict[str, Any]) -> None:
    body = {"inputs": PROMPT, "parameters": DETAILED_PARAMETERS}
    response = httpx.post(f"{server_url}/generate_stream", json=body, timeout=30)

    events = _sse_events(response)
    assert len(events) == DETAILED_PARAMETERS["max_new_tokens"]
    for event in events:
        _check(spec, "StreamResponse", event)


def test_info_matches_spec(server_url: str, spec: dict[str, Any]) -> None:
    _check(spec, "Info", httpx.get(f"{server_url}/info", timeout=10).json())


def test_error_matches_spec(server_url: str, spec: dict[str, Any]) -> None:
    body = {"inputs": PROMPT, "parameters": {"adapter_id": "no-such-adapter"}}
    response = httpx.post(f"{server_url}/generate", json=body, timeout=10)

    assert response.status_code == 422
    _check(spec, "ErrorResponse", response.json())


def test_chat_completion_matches_spec(server_url: str, spec: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "Speak."}], "max_tokens": 6}
    response = httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=30)

    _check(spec, "ChatCompletion", response.json())


def test_chat_stream_chunks_match_spec(server_url: str, spec: dict[str, Any]) -> None:
    body = {
        "messages": [{"role": "user", "content": "Speak."}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = httpx.post(f"{server_url}/v1/chat/completions", json=body, timeout=30)

    chunks = _sse_events(response)
    assert chunks
    for chunk in chunks:
        _check(spec, "ChatCompletionChunk", chunk)
    _check(spec, "Usage", chunks[-1]["usage"])


def test_adapter_generate_matches_spec(adapter_server_url: str, spec: dict[str, Any]) -> None:
    body = {"inputs": PROMPT, "parameters": {**DETAILED_PARAMETERS, "adapter_id": "verse"}}
    response = httpx.post(f"{adapter_server_url}/generate", json=body, timeout=30)

    assert response.status_code == 200
    _check(spec, "GenerateResponse", response.json())
