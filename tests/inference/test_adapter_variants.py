"""Variants that name a LoRA adapter, through the inference service to a model server that serves adapters.

Both backend kinds reach the same server: `tgi` sends the adapter as TGI's
model name, `openai` as the OpenAI model name, as vLLM expects.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from shared.events import Envelope, EventType, GenerationParams, VariantSpec
from tests.inference.harness import assigned_envelope, running_inference
from tests.support.jetstream import publish_envelope, wait_for_event

pytestmark = [pytest.mark.nats, pytest.mark.redis]

WAIT_S = 60.0
BACKEND_KINDS = ("tgi", "openai")


def _assigned(backend: str, adapter_id: str | None) -> Envelope:
    # Temperature 0 decodes greedily, so equal text means the same model and adapter.
    variant = VariantSpec(
        key=adapter_id or "base",
        backend=backend,
        model="tinyshakespeare-llama",
        adapter_id=adapter_id,
        params=GenerationParams(temperature=0.0, max_new_tokens=16),
    )
    return assigned_envelope(
        variant, prompt="Speak, good sir.", user_id="alice", experiment_key="adapters", hash_value=0.5
    )


@pytest.fixture
def adapter_backends_file(tmp_path: Path, adapter_model_server_url: str) -> Path:
    """The adapter server once per backend kind, plus `embedded`, which the shipped experiments name."""
    path = tmp_path / "backends.yaml"
    path.write_text(
        "backends:\n"
        f"  embedded: {{kind: tgi, url: '{adapter_model_server_url}'}}\n"
        + "".join(f"  {kind}: {{kind: {kind}, url: '{adapter_model_server_url}'}}\n" for kind in BACKEND_KINDS),
        encoding="utf-8",
    )
    return path


async def _completed_texts(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, backends_file: Path, assigned: list[Envelope]
) -> list[str]:
    async with running_inference(bus_url, redis_url, backends_file):
        for envelope in assigned:
            await publish_envelope(jetstream, envelope)
        completed = [
            await wait_for_event(jetstream, EventType.COMPLETED, envelope.request_id, WAIT_S) for envelope in assigned
        ]
    return [event.parsed_payload().text for event in completed]


@pytest.mark.parametrize("backend", BACKEND_KINDS)
async def test_variant_adapter_selects_output(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, adapter_backends_file: Path, backend: str
) -> None:
    assigned = [
        _assigned(backend, "verse"),
        _assigned(backend, "prose"),
        _assigned(backend, None),
        _assigned(backend, "verse"),
    ]

    verse, prose, base, verse_again = await _completed_texts(
        jetstream, bus_url, redis_url, adapter_backends_file, assigned
    )

    assert verse != prose
    assert verse != base
    assert prose != base
    assert verse == verse_again


async def test_unknown_adapter_fails_request(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, adapter_backends_file: Path
) -> None:
    assigned = _assigned("tgi", "sonnet")

    async with running_inference(bus_url, redis_url, adapter_backends_file):
        await publish_envelope(jetstream, assigned)
        failed = await wait_for_event(jetstream, EventType.FAILED, assigned.request_id, WAIT_S)

    payload = failed.parsed_payload()
    assert payload.error_code == "backend_rejected"
    assert "unknown model or adapter 'sonnet'" in payload.message
