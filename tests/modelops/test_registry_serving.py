"""The model server serves the registered adapters of its model under their registered names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import AsyncInferenceClient

from services.model_server.app import load_engine
from services.model_server.registry import registered_adapters
from shared.modeling import ModelLoadError
from shared.settings import DEFAULT_MODEL_DIR
from tests.model_server.conftest import serve
from tests.modelops.test_registry import run_model
from tests.support.jetstream import private_nats
from tests.support.lora import TRAINING_LINES, TRAINING_PROMPT, train_adapter


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A nats-server of this module's own, so no other test's registrations reach its model server."""
    with private_nats(tmp_path_factory, "registry-nats") as url:
        yield url


@pytest.fixture(scope="module")
def registered(registry_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Register the committed model, a trained adapter over it, an adapter of another base and one whose folder is gone."""
    folders = tmp_path_factory.mktemp("registered")
    train_adapter(TRAINING_LINES["verse"], folders / "verse")
    other_base = folders / "other-base"
    other_base.mkdir()
    (other_base / "config.json").write_text("{}")
    gone = folders / "gone"
    gone.mkdir()
    (gone / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    registrations = [
        ["shakespeare", "--path", str(DEFAULT_MODEL_DIR)],
        ["other", "--path", str(other_base)],
        ["romeo-verse", "--path", str(folders / "verse"), "--adapter", "--base", "shakespeare"],
        ["elsewhere", "--path", str(folders / "verse"), "--adapter", "--base", "other"],
        ["gone", "--path", str(gone), "--adapter", "--base", "shakespeare"],
    ]
    for arguments in registrations:
        exit_code, output = run_model(registry_url, "register", *arguments)
        assert exit_code == 0, output
    gone.joinpath("adapter_config.json").unlink()
    gone.rmdir()
    return asyncio.run(registered_adapters(registry_url, DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def registry_server_url(registered: dict[str, Path]) -> Iterator[str]:
    yield from serve(load_engine(DEFAULT_MODEL_DIR, 2, None, registered))


def test_only_adapters_of_served_base(registered: dict[str, Path]) -> None:
    assert sorted(registered) == ["romeo-verse"]


async def _generate(url: str, adapter_id: str | None) -> str:
    async with AsyncInferenceClient(base_url=url) as client:
        return await client.text_generation(TRAINING_PROMPT, max_new_tokens=16, adapter_id=adapter_id)


async def test_registered_name_selects_adapter(registry_server_url: str) -> None:
    base = await _generate(registry_server_url, None)
    tuned = await _generate(registry_server_url, "romeo-verse")

    assert tuned != base
    assert tuned.startswith("KING")


def test_unreachable_registry_fails_start() -> None:
    with pytest.raises(ModelLoadError, match="cannot reach NATS"):
        asyncio.run(registered_adapters("nats://127.0.0.1:1", DEFAULT_MODEL_DIR))
