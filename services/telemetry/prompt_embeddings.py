"""Filling the `prompt_embedding` column of request.accepted signal rows, off the event loop.

The embedding is all-MiniLM-L6-v2's, from the encoder that the prompt
classifier uses (`shared.scanning.prompt_encoder`), without quantization,
so it matches sentence-transformers' embedding of each window. A prompt
longer than one window gets the mean of its window embeddings, L2-normalised
again, so every prompt has one unit vector and a centroid over prompts is a
plain average in ClickHouse.
"""

from __future__ import annotations

import asyncio

import numpy as np

from services.telemetry.signals import Signal
from shared.scanning.prompt_encoder import load_prompt_encoder


class PromptEmbedder:
    """Computes the prompt embeddings of a batch's signal rows in a worker thread.

    The encoder loads on the first batch with a prompt, in that thread (1 to
    4 s). Each prompt costs an encoder pass whose CPU time grows with its
    length (`settings.DEFAULT_EMBED_PROMPTS` gives figures).
    """

    async def fill(self, signals: list[Signal]) -> None:
        """Set `row.prompt_embedding` of each signal that carries a prompt; leave the others as they are."""
        pending = [signal for signal in signals if signal.prompt is not None]
        if not pending:
            return
        embeddings = await asyncio.to_thread(embed_prompts, [signal.prompt or "" for signal in pending])
        for signal, embedding in zip(pending, embeddings, strict=True):
            signal.row.prompt_embedding = embedding


def embed_prompts(prompts: list[str]) -> list[list[float]]:
    """Return one L2-normalised 384-value embedding per prompt. Blocks for the encoder passes."""
    encoder = load_prompt_encoder(quantized=False)
    return [_pooled(windows) for windows in encoder.embed_many(prompts)]


def _pooled(window_embeddings: np.ndarray) -> list[float]:
    mean = window_embeddings.mean(axis=0)
    # Window embeddings are unit vectors, so their mean is zero only when they cancel out exactly.
    norm = float(np.linalg.norm(mean))
    return (mean / norm if norm > 0 else mean).astype(np.float32).tolist()
