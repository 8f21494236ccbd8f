"""LoRA adapters trained here on the committed model, served by a real model server and chosen per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import ValidationError as TgiValidationError

from services.model_server.adapters import BASE_ADAPTER, load_adapters
from shared.modeling import ModelLoadError, load_causal_lm
from shared.settings import DEFAULT_MODEL_DIR
from tests.support.lora import TRAINING_PROMPT

async def _generate(url: str, adapter_id: str | None, seed: int | None = None) -> str:
    async with AsyncInferenceClient(base_url=url) as client:
        if seed is None:
            return await client.text_generation(TRAINING_PROMPT, max_new_tokens=16, adapter_id=adapter_id)
        return await client.text_generation(
            TRAINING_PROMPT, max_new_tokens=16, adapter_id=adapter_id, do_sample=True, temperature=0.8, seed=seed
        )


async def test_adapters_change_output(adapter_server_url: str) -> None:
    base = await _generate(adapter_server_url, None)
    verse = await _generate(adapter_server_url, "verse")
    prose = await _generate(adapter_server_url, "prose")

    assert verse != prose
    assert verse != base
    assert prose != base


async def test_adapter_learned_its_line(adapter_server_url: str) -> None:
    verse = await _generate(adapter_server_url, "verse")

    assert verse.startswith("KING")


async def test_same_seed_same_adapter_repeats(adapter_server_url: str) -> None:
    first = await _generate(adapter_server_url, "prose", seed=7)
    second = await _generate(adapter_server_url, "prose", seed=7)
    other = await _generate(adapter_server_url, "verse", seed=7)

    assert first == second
    assert first != other


async def test_streams_interleave_adapters(adapter_server_url: str) -> None:
    # Two generations at once on different adapters: the forward lock keeps each on its own adapter.
    together = await _gather(adapter_server_url)
    alone = [await _generate(adapter_server_url, "verse"), await _generate(adapter_server_url, "prose")]

    assert together == alone


async def _gather(url: str) -> list[str]:
    return list(await asyncio.gather(_generate(url, "verse"), _generate(url, "prose")))


async def test_unknown_adapter_rejected(adapter_server_url: str) -> None:
    with pytest.raises(TgiValidationError) as caught:
        await _generate(adapter_server_url, "sonnet")

    assert "unknown model or adapter 'sonnet'" in str(caught.value)
    assert "['prose', 'verse']" in str(caught.value)


def test_chat_model_selects_adapter(adapter_server_url: str) -> None:
    def complete(model: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": "Speak."}], "max_tokens": 12}
        response = httpx.post(f"{adapter_server_url}/v1/chat/completions", json=body, timeout=30.0)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"]

    assert complete("verse") != complete("prose")


def test_models_lists_adapters(adapter_server_url: str) -> None:
    response = httpx.get(f"{adapter_server_url}/v1/models", timeout=10.0)

    ids = [model["id"] for model in response.json()["data"]]
    assert ids == [DEFAULT_MODEL_DIR.name, "prose", "verse"]


def test_missing_folder_named(tmp_path: Path) -> None:
    model, _tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)

    with pytest.raises(ModelLoadError, match="does not exist"):
        load_adapters(model, tmp_path / "absent")


def test_folder_without_adapter_named(tmp_path: Path) -> None:
    model, _tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    (tmp_path / "notes").mkdir()

    with pytest.raises(ModelLoadError, match="no adapter found in"):
        load_adapters(model, tmp_path)


def test_base_name_reserved(tmp_path: Path, adapters_dir: Path) -> None:
    model, _tokenizer = load_causal_lm(DEFAULT_MODEL_DIR)
    reserved = tmp_path / BASE_ADAPTER
    reserved.mkdir()
    for item in (adapters_dir / "verse").iterdir():
        (reserved / item.name).write_bytes(item.read_bytes())

    with pytest.raises(ModelLoadError, match="may not be named"):
        load_adapters(model, tmp_path)
