"""Loading causal LMs and their tokenizers, shared by training jobs and the model server."""

from shared.modeling.loading import ModelLoadError, load_causal_lm

__all__ = ["ModelLoadError", "load_causal_lm"]
