"""The inference service's `/metrics` after one completed generation."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.js import JetStreamContext

from shared.embedded.infrastructure import free_port
from shared.events import EventType, GenerationParams, VariantSpec
from tests.inference.harness import assigned_envelope, running_inference, write_backends
from tests.inference.scripted_tgi import GOOD_EVENTS, ScriptedServer, stream
from tests.support.jetstream import publish_envelope, wait_for_event
from tests.support.metrics import sample_value, scrape_when

pytestmark = [pytest.mark.nats, pytest.mark.redis]

WAIT_S = 60.0
LABELS = {"backend": "scripted", "variant": "control"}


async def test_one_generation_counted(
    jetstream: JetStreamContext, bus_url: str, redis_url: str, tmp_path: Path, scripted: ScriptedServer
) -> None:
    # GOOD_EVENTS streams two tokens.
    scripted.reset(stream(GOOD_EVENTS))
    backends_file = write_backends(tmp_path, "http://127.0.0.1:9", scripted.url)
    variant = VariantSpec(key="control", backend="scripted", params=GenerationParams(max_new_tokens=24))
    assigned = assigned_envelope(variant)
    port = free_port()

    async with running_inference(bus_url, redis_url, backends_file, metrics_port=port):
        await publish_envelope(jetstream, assigned)
        await wait_for_event(jetstream, EventType.COMPLETED, assigned.request_id, WAIT_S)
        # The in-flight gauge drops last, once the attempt has recorded everything else.
        exposition = await scrape_when(port, "sluice_inference_generations_in_flight", 0, WAIT_S, backend="scripted")

    assert sample_value(exposition, "sluice_inference_ttft_seconds_count", **LABELS) == 1
    assert sample_value(exposition, "sluice_inference_generation_duration_seconds_count", **LABELS) == 1
    assert sample_value(exposition, "sluice_inference_generation_duration_seconds_sum", **LABELS) > 0
    assert sample_value(exposition, "sluice_inference_completion_tokens_total", **LABELS) == 2
    assert sample_value(exposition, "sluice_inference_generations_in_flight", backend="scripted") == 0
    assert sample_value(exposition, "sluice_inference_admission_queue_depth", backend="scripted") == 0
