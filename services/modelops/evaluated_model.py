"""Loading the model version that `sluice model eval` scores: a base model, optionally with a peft LoRA adapter.

A quantized folder loads like a base model, through `shared.modeling`. The
scheme's label comes from the metadata that `sluice model quantize` writes,
else from the `quantization_config` of `config.json` (AWQ and GPTQ folders).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from services.modelops.quantize import METADATA_FILE as QUANTIZATION_METADATA_FILE
from shared.modeling import ModelLoadError, load_causal_lm

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"


@dataclass(frozen=True)
class EvaluatedModel:
    """A loaded model version in eval mode, with the labels its results are stored under."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    # The base model's folder name, or the hub id as given.
    base: str
    # The adapter folder's name, or None for the base model alone.
    adapter: str | None
    # "int8", "int4", "awq", "gptq" or the config's quant_method; None for full precision.
    quantization: str | None


def load_evaluated_model(model_dir: str | Path, adapter_dir: Path | None = None) -> EvaluatedModel:
    """Load `model_dir` on the CPU, wrapped with the LoRA adapter at `adapter_dir` when given.

    Raises `ModelLoadError` when the model or the adapter does not load.
    """
    model, tokenizer = load_causal_lm(model_dir)
    if adapter_dir is not None:
        model = _with_adapter(model, adapter_dir)
    base = Path(model_dir).name if Path(model_dir).is_dir() else str(model_dir)
    adapter = adapter_dir.name if adapter_dir is not None else None
    return EvaluatedModel(model, tokenizer, base, adapter, quantization_label(model_dir))


def quantization_label(model_dir: str | Path) -> str | None:
    """Return the quantization scheme that the folder declares, or None.

    `sluice model quantize` writes its method ("int8", "int4") to
    `QUANTIZATION_METADATA_FILE`. Otherwise transformers writes `quantization_config` with `quant_method` ("awq",
    "gptq", "quanto", ...). quanto's method does not give the bit width,
    so its `weights` ("int8", "int4") is the label instead.
    """
    metadata_file = Path(model_dir) / QUANTIZATION_METADATA_FILE
    if metadata_file.is_file():
        method = json.loads(metadata_file.read_text(encoding="utf-8")).get("method")
        if isinstance(method, str):
            return method
    config_file = Path(model_dir) / MODEL_CONFIG
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config")
    if not isinstance(config, dict):
        return None
    if config.get("quant_method") == "quanto" and isinstance(config.get("weights"), str):
        return config["weights"]
    method = config.get("quant_method")
    return method if isinstance(method, str) else None


def _with_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    # Imported here: peft takes about 2 s to import, which a base-model run need not wait for.
    from peft import PeftModel

    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise ModelLoadError(f"no LoRA adapter in {adapter_dir}: expected {ADAPTER_CONFIG}, as peft's save_pretrained writes it")
    try:
        wrapped = PeftModel.from_pretrained(model, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"the LoRA adapter in {adapter_dir} did not load onto the base model: {error}") from error
    return wrapped.eval()
