"""Quantize a causal LM folder's Linear layers to int8 or int4 weights on the CPU, and save it so it loads again.

int8 and int4 are weight-only quantization by optimum-quanto: `quantize`
swaps each chosen `nn.Linear` for a quanto layer and `freeze` replaces its
float weights with integers and scales. int8 keeps one scale per output row,
and int4 keeps a scale and a shift per group of 128 input weights (quanto's
default group size). Activations stay in the model's float dtype.

The folder has the layout of `shared.modeling.quantized`, which
`load_causal_lm` and therefore the model server read, plus `METADATA_FILE`
with the method, the source model and the measured sizes.

AWQ and GPTQ are calibrated methods that need a CUDA GPU. No library for them
installs alongside this build's pins, so `check_method_available` rejects
them and gives the reason.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from optimum.quanto import qint4, qint8, qtype, quantize
from torch import nn
from transformers import PreTrainedModel

from services.modelops.model_size import SizeReport, folder_bytes, layers_bytes, layers_fp32_bytes, state_dict_bytes
from services.modelops.quantize_methods import QuantizationMethod, QuantizeError, check_method_available
from shared.modeling import load_causal_lm, save_quantized

METADATA_FILE = "sluice_quantization.json"
# A folder written to be read by every service, whatever user runs them.
FOLDER_MODE = 0o755
FILE_MODE = 0o644

CPU_WEIGHT_TYPES: dict[QuantizationMethod, qtype] = {QuantizationMethod.INT8: qint8, QuantizationMethod.INT4: qint4}


@dataclass(frozen=True)
class QuantizationResult:
    """The output folder, the layers quantized or left in float, and the sizes measured by `quantize_folder`."""

    out_dir: Path
    method: QuantizationMethod
    layer_names: list[str]
    excluded_layer_names: list[str]
    sizes: SizeReport


# Called with a step's description, the steps done and the step count, which
# is None until the model is loaded and its layers counted.
ProgressCallback = Callable[[str, int, int | None], None]


def check_request(model_dir: Path, out_dir: Path, method: QuantizationMethod, force: bool) -> None:
    """Raise `QuantizeError` when `quantize_folder` would reject these arguments; reads no weights."""
    check_method_available(method, torch.cuda.is_available())
    check_paths(model_dir, out_dir, force)


def check_paths(model_dir: Path, out_dir: Path, force: bool) -> None:
    """Raise `QuantizeError` when `model_dir` is no model folder, or `out_dir` is occupied and `force` is off."""
    if not model_dir.is_dir():
        raise QuantizeError(f"model folder {model_dir} not found; pass a folder written by save_pretrained")
    if not (model_dir / "config.json").is_file():
        raise QuantizeError(f"model folder {model_dir} has no config.json; pass a folder written by save_pretrained")
    if out_dir.resolve() == model_dir.resolve():
        raise QuantizeError(f"--out {out_dir} is the model folder itself; choose another output folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise QuantizeError(f"--out {out_dir} is a file; choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise QuantizeError(f"--out {out_dir} already exists and is not empty; pass --force to replace it")


def quantize_folder(
    model_dir: Path,
    out_dir: Path,
    method: QuantizationMethod,
    *,
    force: bool = False,
    on_progress: ProgressCallback | None = None,
) -> QuantizationResult:
    """Quantize the model in `model_dir` with `method` and write it to `out_dir`.

    Every check runs before the model is read, and nothing is written when
    one fails. With `force`, an existing `out_dir` is replaced whole.

    Raises:
        QuantizeError: see `check_request`, or the model has no Linear layer to quantize.
        ModelLoadError: `model_dir` contains no loadable causal LM or tokenizer.
    """
    check_request(model_dir, out_dir, method, force)
    report = on_progress or _no_progress

    report("loading the model", 0, None)
    model, tokenizer = load_causal_lm(model_dir)
    layer_names, excluded = select_layers(model)
    if not layer_names:
        raise QuantizeError(f"the model in {model_dir} has no nn.Linear layer to quantize besides the output embeddings")
    before = _measure_before(model, layer_names, model_dir)

    quantize_linear_layers(model, layer_names, CPU_WEIGHT_TYPES[method], report)

    report("saving", len(layer_names), len(layer_names) + 1)
    staging = _staging_dir(out_dir)
    try:
        save_quantized(model, tokenizer, staging)
        sizes = SizeReport(**before, **_measure_after(model, layer_names, staging))
        result = QuantizationResult(out_dir, method, layer_names, excluded, sizes)
        _write_metadata(staging, result, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _make_readable(staging)
    _replace_dir(staging, out_dir)
    report("saved", len(layer_names) + 1, len(layer_names) + 1)
    return result


def select_layers(model: PreTrainedModel) -> tuple[list[str], list[str]]:
    """Return the names of the `nn.Linear` layers to quantize, and of those left in float.

    Every Linear layer is quantized except the output embeddings (`lm_head`).
    That layer produces the logits directly, so its rounding error reaches the
    token choice with no later layer to absorb it. The usual tools keep it in
    float too: AutoAWQ 0.2.9 quantizes only the decoder blocks, GPTQModel 7.7
    defaults to `lm_head=False`, and transformers 4.51's bitsandbytes
    integration skips it (`get_keys_to_not_convert`). When it is tied to the input
    embeddings, quantizing it would also untie the two and store a second
    copy. It costs little to keep: 2.1 MB fp32 of the shipped 17.8 MB
    model, and about 1% of a 13B Llama's parameters.
    """
    output_embeddings = model.get_output_embeddings()
    quantized, excluded = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        (excluded if module is output_embeddings else quantized).append(name)
    return quantized, excluded


def quantize_linear_layers(model: nn.Module, layer_names: list[str], weights: qtype, report: ProgressCallback) -> None:
    """Replace the named Linear layers with quanto layers whose weights are frozen to `weights`, in place."""
    # An fnmatch pattern without wildcards matches only its own name.
    quantize(model, weights=weights, include=layer_names)
    for done, name in enumerate(layer_names):
        report(f"quantizing {name}", done, len(layer_names) + 1)
        model.get_submodule(name).freeze()


def _no_progress(_step: str, _done: int, _total: int | None) -> None:
    pass


def _measure_before(model: PreTrainedModel, layer_names: list[str], model_dir: Path) -> dict[str, int]:
    return {
        "disk_bytes_before": folder_bytes(model_dir),
        "memory_bytes_before": state_dict_bytes(model),
        "quantized_layers": len(layer_names),
        "layers_bytes_before": layers_bytes(model, layer_names),
        "layers_fp32_bytes": layers_fp32_bytes(model, layer_names),
    }


def _measure_after(model: PreTrainedModel, layer_names: list[str], folder: Path) -> dict[str, int]:
    return {
        "disk_bytes_after": folder_bytes(folder),
        "memory_bytes_after": state_dict_bytes(model),
        "layers_bytes_after": layers_bytes(model, layer_names),
    }


def _write_metadata(folder: Path, result: QuantizationResult, model_dir: Path) -> None:
    # Written last, so the disk size it records leaves out this file (about 1.5 kB).
    metadata = {
        "method": result.method.value,
        "weights": CPU_WEIGHT_TYPES[result.method].name,
        "library": f"optimum-quanto {version('optimum-quanto')}",
        "source_model": str(model_dir),
        "quantized_layers": result.layer_names,
        "float_layers": result.excluded_layer_names,
        "sizes_bytes": asdict(result.sizes),
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def _staging_dir(out_dir: Path) -> Path:
    # Written next to the target and swapped in, so a reader never sees half a folder.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def _make_readable(folder: Path) -> None:
    # mkdtemp creates the folder private to its owner, and model.safetensors comes out private too.
    folder.chmod(FOLDER_MODE)
    for path in folder.iterdir():
        path.chmod(FILE_MODE)


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old)
