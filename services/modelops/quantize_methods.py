"""The methods `sluice model quantize` accepts, and which of them can run in this build.

Kept apart from `services.modelops.quantize` because it imports no torch, so
the CLI can declare its options without the seconds that importing torch takes.
"""

from __future__ import annotations

from enum import StrEnum


class QuantizationMethod(StrEnum):
    """A quantization method: int8 and int4 run on the CPU, AWQ and GPTQ need a CUDA GPU."""

    INT8 = "int8"
    INT4 = "int4"
    AWQ = "awq"
    GPTQ = "gptq"


GPU_METHODS = frozenset({QuantizationMethod.AWQ, QuantizationMethod.GPTQ})

# Checked with pip against this build's pins (torch 2.13.0, transformers
# 4.51.3, numpy 2.4.6) in December 2026. Every llm-compressor release conflicts:
# up to 0.6.0.1 they require numpy below 2, from 0.7.0 transformers 4.53 or
# later (0.14.0.1: transformers 5.15 to 5.17). GPTQModel 7.7.0 requires torch
# 2.14.1 and transformers 5.20, and ships as source built against CUDA. AutoAWQ
# is deprecated by its authors. The torch wheel pinned here is also a CPU build.
UNAVAILABLE_IN_BUILD = (
    "{method} is not available in this build: no maintained AWQ or GPTQ library installs alongside "
    "torch 2.13.0 and transformers 4.51.3 (llm-compressor needs numpy below 2 or transformers 4.53 or later, "
    "GPTQModel 7.7 needs torch 2.14.1 and transformers 5.20, and AutoAWQ is deprecated). "
    "Quantize with llm-compressor in a separate environment with a CUDA torch, or use --method int8 or int4 here"
)


class QuantizeError(ValueError):
    """The request cannot run: an unavailable method, a missing model folder or an occupied output folder."""


def check_method_available(method: QuantizationMethod, cuda_available: bool) -> None:
    """Raise `QuantizeError` unless `method` can run here. `cuda_available` is `torch.cuda.is_available()`."""
    if method not in GPU_METHODS:
        return
    name = method.value.upper()
    if not cuda_available:
        raise QuantizeError(
            f"{name} needs a CUDA GPU; none is present on this machine (torch.cuda.is_available() is False). "
            "int8 and int4 run on the CPU: use --method int8 or --method int4"
        )
    raise QuantizeError(UNAVAILABLE_IN_BUILD.format(method=name))
