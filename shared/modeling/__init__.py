"""Loading causal LMs and their tokenizers, shared by training jobs and the model server."""

from shared.modeling.loading import ModelLoadError, load_causal_lm
from shared.modeling.quantized import QUANTIZATION_MAP_FILE, is_quantized_folder, save_quantized, supports_inference_mode

__all__ = [
    "QUANTIZATION_MAP_FILE",
    "ModelLoadError",
    "is_quantized_folder",
    "load_causal_lm",
    "save_quantized",
    "supports_inference_mode",
]
