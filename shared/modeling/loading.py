"""Load any Hugging Face causal LM folder, or hub id, with its tokenizer for inference."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from shared.modeling.quantized import is_quantized_folder, load_quantized_model


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; the transformers or OS error is the cause."""


def load_causal_lm(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `model_dir` (a local folder or a hub id) as a causal LM in eval mode on `device`, with its tokenizer.

    Weights keep the dtype they were saved in. A folder written by
    `sluice model quantize` (int8 or int4) loads with its layers quantized,
    through `load_quantized_model`. With `HF_HUB_OFFLINE` set, only
    local files and the hub cache are read. A tokenizer without a pad token
    gets its EOS token as pad, so batched calls work.

    Raises:
        ModelLoadError: the folder or id does not exist, or contains no causal LM or tokenizer.
    """
    source = str(model_dir)
    local_only = _hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        if is_quantized_folder(source):
            model = load_quantized_model(Path(source))
        else:
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, torch_dtype="auto")
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load a causal LM from {source!r}: {error}. Pass a folder written by "
            "save_pretrained (config.json, weights, tokenizer files) or a hub id present in the cache"
        ) from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def _hub_offline() -> bool:
    # huggingface_hub treats these values as true.
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
