"""Save and load causal LMs whose Linear layers optimum-quanto quantized (int8 or int4 weights).

A quantized folder is a `save_pretrained` folder whose safetensors file contains
quanto's packed weights and scales, plus `quanto_qmap.json`, which maps each
quantized layer to its weight and activation types. This is the layout that
`QuantizedModelForCausalLM.save_pretrained` of optimum-quanto 0.2.7 writes, so
its `from_pretrained` reads these folders too. `AutoModelForCausalLM` cannot:
it would leave every quantized layer randomly initialised.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate import init_empty_weights
from optimum.quanto import WeightQBitsTensor, quantization_map, requantize
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import SAFE_WEIGHTS_NAME

# The file name that optimum-quanto's own loader looks for.
QUANTIZATION_MAP_FILE = "quanto_qmap.json"


def is_quantized_folder(model_dir: str | Path) -> bool:
    """Return whether `model_dir` is a local folder with a quanto quantization map."""
    return (Path(model_dir) / QUANTIZATION_MAP_FILE).is_file()


def supports_inference_mode(model: nn.Module) -> bool:
    """Return whether `model`'s forward pass can run under `torch.inference_mode`.

    Weights of fewer than 8 bits (quanto's `WeightQBitsTensor`, such as int4)
    cannot: in optimum-quanto 0.2.7 their matmul fallback raises "Cannot set
    version_counter for inference tensor" there. Run them under `torch.no_grad`.
    """
    return not any(isinstance(parameter, WeightQBitsTensor) for parameter in model.parameters())


def save_quantized(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Write `model` (quantized and frozen by quanto), its quantization map and `tokenizer` to `out_dir`."""
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    qmap = quantization_map(model)
    (out_dir / QUANTIZATION_MAP_FILE).write_text(json.dumps(qmap, indent=2), encoding="utf-8")


def load_quantized_model(model_dir: Path) -> PreTrainedModel:
    """Rebuild the quantized model saved in `model_dir` on the CPU, in eval mode.

    The architecture comes from `config.json`, built without weights; quanto's
    `requantize` then swaps in the quantized layers and loads the tensors.

    Raises:
        OSError: a file is missing or unreadable.
        ValueError: the files do not match each other, for example a tensor
            is missing from the weights file or has the wrong shape.
    """
    qmap = json.loads((model_dir / QUANTIZATION_MAP_FILE).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, torch_dtype=config.torch_dtype)
    state_dict = load_file(model_dir / SAFE_WEIGHTS_NAME)
    try:
        requantize(model, state_dict=state_dict, quantization_map=qmap, device=torch.device("cpu"))
    except (KeyError, RuntimeError) as error:
        weights_file = model_dir / SAFE_WEIGHTS_NAME
        raise ValueError(f"the weights in {weights_file} do not match {QUANTIZATION_MAP_FILE}: {error}") from error
    if config.tie_word_embeddings:
        model.tie_weights()
    _check_all_loaded(model, state_dict.keys(), model_dir)
    return model.eval()


def _check_all_loaded(model: PreTrainedModel, loaded_keys: Iterable[str], model_dir: Path) -> None:
    # requantize loads with strict=False, so a tensor absent from the file
    # would stay uninitialised without an error. A key that shares storage
    # with a loaded one, such as a tied output embedding, is loaded too.
    expected = model.state_dict()
    loaded = set(loaded_keys)
    loaded_pointers = {expected[key].data_ptr() for key in loaded if key in expected}
    missing = [key for key, tensor in expected.items() if key not in loaded and tensor.data_ptr() not in loaded_pointers]
    if missing:
        weights_file = model_dir / SAFE_WEIGHTS_NAME
        raise ValueError(f"{weights_file} is missing {len(missing)} of the model's tensors, first {missing[0]!r}")
