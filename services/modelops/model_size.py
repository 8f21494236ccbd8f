"""Measure a model's bytes on disk and in memory, before and after quantization.

`PreTrainedModel.get_memory_footprint()` counts parameters and buffers, where
quanto keeps each quantized weight as one tensor subclass whose reported size
is the unquantized one (seen with optimum-quanto 0.2.7). The state dict lists
the stored tensors instead: packed integer data, scales and shifts. So every
in-memory figure here is a sum over the state dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

FP32_BYTES = 4


@dataclass(frozen=True)
class SizeReport:
    """Bytes before and after quantization, for the whole model and for the quantized layers alone.

    `layers_fp32_bytes` is what the quantized layers' parameters take in
    fp32, the reference for their compression ratio whatever dtype the
    source model was saved in.
    """

    disk_bytes_before: int
    disk_bytes_after: int
    memory_bytes_before: int
    memory_bytes_after: int
    quantized_layers: int
    layers_bytes_before: int
    layers_bytes_after: int
    layers_fp32_bytes: int

    @property
    def layers_fp32_ratio(self) -> float:
        """The quantized layers' bytes as a fraction of their fp32 bytes."""
        return self.layers_bytes_after / self.layers_fp32_bytes


def folder_bytes(folder: Path) -> int:
    """Return the total size in bytes of the files in `folder` and its subfolders."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def state_dict_bytes(module: nn.Module) -> int:
    """Return the bytes of every tensor in `module`'s state dict (elements times element size)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in module.state_dict().values())


def layers_bytes(model: nn.Module, layer_names: list[str]) -> int:
    """Return the state dict bytes of the named submodules of `model`."""
    return sum(state_dict_bytes(model.get_submodule(name)) for name in layer_names)


def layers_fp32_bytes(model: nn.Module, layer_names: list[str]) -> int:
    """Return the bytes the named submodules' parameters would take in fp32."""
    return sum(
        parameter.numel() * FP32_BYTES for name in layer_names for parameter in model.get_submodule(name).parameters()
    )
