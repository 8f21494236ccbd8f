"""Inspect a causal LM's layers from its config alone, without reading its weights."""

from __future__ import annotations

from pathlib import Path

from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from shared.modeling.loading import ModelLoadError


def linear_layer_names(model_dir: str | Path) -> frozenset[str]:
    """Return the last name component of every `nn.Linear` in the model at `model_dir` (`q_proj`, `lm_head`, ...).

    These are the names peft's `target_modules` matches. The model is built
    on the meta device from `config.json`, so no weights are read and the cost
    does not grow with the model. `HF_HUB_OFFLINE` keeps a hub id to the cache.

    Raises:
        ModelLoadError: `model_dir` does not exist or contains no causal LM config.
    """
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot read a causal LM config from {str(model_dir)!r}: {error}. Pass a folder written by "
            "save_pretrained (config.json, weights, tokenizer files) or a hub id present in the cache"
        ) from error
    return frozenset(name.rsplit(".", 1)[-1] for name, module in skeleton.named_modules() if isinstance(module, nn.Linear))
