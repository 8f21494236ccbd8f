"""Serving several peft LoRA adapters over one base model, chosen per request.

An adapters folder contains one subfolder per adapter, as peft's
`save_pretrained` writes it (`adapter_config.json` and the weights). The
subfolder's name is the adapter id a request sends, as TGI's `adapter_id` or
an OpenAI `model`. Adapters registered in the model registry
(`shared.model_registry`) over the served model join them under their
registered names. Every adapter stays loaded; a forward pass names the one
it uses, and `BASE_ADAPTER` runs the base model alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from transformers import PreTrainedModel

from shared.modeling import ModelLoadError

if TYPE_CHECKING:
    from peft import PeftModel

log = structlog.get_logger(__name__)

# peft's name for "no adapter" in a forward pass that names its adapters.
BASE_ADAPTER = "__base__"
_ADAPTER_CONFIG = "adapter_config.json"


def load_adapters(model: PreTrainedModel, adapters_dir: Path) -> tuple[PeftModel, frozenset[str]]:
    """Load every adapter under `adapters_dir` onto `model`; return the wrapped model and the adapter ids.

    Raises `ModelLoadError` when the folder is missing, contains no adapter, or an adapter does not load.
    """
    return load_adapter_folders(model, adapter_folders(adapters_dir))


def load_adapter_folders(model: PreTrainedModel, folders: Mapping[str, Path]) -> tuple[PeftModel, frozenset[str]]:
    """Load each adapter folder of `folders` (adapter id -> folder, at least one) onto `model`.

    Return the wrapped model and the adapter ids. Raises `ModelLoadError` when an adapter does not load.
    """
    # Imported here: peft takes about 2 s to import, which a server without adapters need not wait for.
    from peft import PeftModel

    (first_name, first), *rest = sorted(folders.items())
    try:
        wrapped = PeftModel.from_pretrained(model, str(first), adapter_name=first_name)
        for name, folder in rest:
            wrapped.load_adapter(str(folder), adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"the LoRA adapters {sorted(folders)} did not load: {error}") from error
    wrapped.eval()
    names = frozenset(folders)
    log.info("adapters_loaded", adapters=sorted(names), folders=[str(folders[name]) for name in sorted(names)])
    return wrapped, names


def adapter_folders(adapters_dir: Path) -> dict[str, Path]:
    """Return adapter id -> folder for every adapter under `adapters_dir`; raise `ModelLoadError` when there is none."""
    return {folder.name: folder for folder in _adapter_folders(adapters_dir)}


def merge_registered(folders: Mapping[str, Path], registered: Mapping[str, Path]) -> dict[str, Path]:
    """Add the registered adapters to the folder's adapters; raise `ModelLoadError` when an id names two folders."""
    merged = dict(folders)
    for name, folder in registered.items():
        if name in merged and merged[name].resolve() != folder.resolve():
            raise ModelLoadError(
                f"the adapter id {name!r} names both {merged[name]} in the adapters folder and the registered {folder}; "
                "rename one of them"
            )
        merged[name] = folder
    return merged


def _adapter_folders(adapters_dir: Path) -> list[Path]:
    if not adapters_dir.is_dir():
        raise ModelLoadError(f"the adapters folder {adapters_dir} does not exist; create it or unset it")
    folders = sorted(path for path in adapters_dir.iterdir() if (path / _ADAPTER_CONFIG).is_file())
    if not folders:
        raise ModelLoadError(
            f"no adapter found in {adapters_dir}: each adapter is a subfolder with {_ADAPTER_CONFIG}"
        )
    if any(folder.name == BASE_ADAPTER for folder in folders):
        raise ModelLoadError(f"an adapter may not be named {BASE_ADAPTER}, peft's name for the base model; rename it")
    return folders
