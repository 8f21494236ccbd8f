"""The committed model, loaded once, and a real uvicorn model server on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.model_server.app import create_app, load_engine
from services.model_server.engine import GenerationEngine, ServingLimits
from shared.embedded.infrastructure import free_port
from shared.modeling import load_causal_lm
from shared.settings import DEFAULT_MODEL_DIR
from tests.support.lora import train_adapters

HOST = "127.0.0.1"
# Small enough that tests can exceed it with a short prompt.
TEST_MAX_TOTAL_TOKENS = 128
SERVER_START_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def model_and_tokenizer() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_causal_lm(DEFAULT_MODEL_DIR)


def make_engine(
    model_and_tokenizer: tuple[PreTrainedModel, PreTrainedTokenizerBase], max_concurrent_generations: int = 2
) -> GenerationEngine:
    """Build an engine on the shared model; each event loop needs its own, because its semaphore binds to one loop."""
    model, tokenizer = model_and_tokenizer
    limits = ServingLimits(
        max_input_tokens=TEST_MAX_TOTAL_TOKENS - 1,
        max_total_tokens=TEST_MAX_TOTAL_TOKENS,
        max_concurrent_generations=max_concurrent_generations,
    )
    return GenerationEngine(model, tokenizer, DEFAULT_MODEL_DIR.name, limits)


@pytest.fixture
def engine(model_and_tokenizer) -> GenerationEngine:
    return make_engine(model_and_tokenizer)


@pytest.fixture(scope="session")
def server_url(model_and_tokenizer) -> Iterator[str]:
    yield from serve(make_engine(model_and_tokenizer))


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adapters of `tests.support.lora`, trained once for the session."""
    return train_adapters(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def adapter_server_url(adapters_dir: Path) -> Iterator[str]:
    """A model server on the committed model that also serves the trained adapters."""
    yield from serve(load_engine(DEFAULT_MODEL_DIR, 2, adapters_dir))


def serve(engine: GenerationEngine) -> Iterator[str]:
    """Run a real uvicorn server for `engine` in a thread on a free port; yield its URL, then stop it."""
    port = free_port(HOST)
    config = uvicorn.Config(create_app(engine), host=HOST, port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="model-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail(f"the model server did not start on {HOST}:{port} within {SERVER_START_TIMEOUT_S} s")
        time.sleep(0.05)
    yield f"http://{HOST}:{port}"
    server.should_exit = True
    thread.join(timeout=10)
