"""llm-guard's model-backed input scanners, loaded from a local model folder with no hub access.

llm-guard 0.3.16 names a hub model in a module-level `Model` for each
scanner and downloads it when the scanner is built. Here the scanner gets a
copy of that `Model` that points at a local folder and passes
`local_files_only=True` to transformers, so a missing or incomplete folder
fails at once instead of reaching for the network.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from shared.scanning.chain import ScanFunction


def build_local_model_scanner(scanner_type: str, model_dir: Path, threshold: float | None) -> ScanFunction:
    """Build llm-guard's `PromptInjection` or `Toxicity` scanner from `model_dir` and return its `scan`.

    Raises `FileNotFoundError` when `model_dir` is not a folder, and whatever
    transformers raises when the folder lacks the model's files.
    """
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model_dir {model_dir} is not a folder; download the model of {scanner_type} there "
            f"(for example with `huggingface-cli download`) on a machine with network access, or remove the entry"
        )
    from llm_guard.input_scanners import PromptInjection, Toxicity, prompt_injection, toxicity

    scanners = {
        "PromptInjection": (PromptInjection, prompt_injection.V2_MODEL),
        "Toxicity": (Toxicity, toxicity.DEFAULT_MODEL),
    }
    scanner_class, hub_model = scanners[scanner_type]
    # Keep the default pipeline_kwargs: replacing them breaks Toxicity's output parsing in llm-guard 0.3.16.
    model = dataclasses.replace(
        hub_model,
        path=str(model_dir),
        kwargs={**hub_model.kwargs, "local_files_only": True},
        tokenizer_kwargs={**hub_model.tokenizer_kwargs, "local_files_only": True},
    )
    options = {} if threshold is None else {"threshold": threshold}
    return scanner_class(model=model, **options).scan  # type: ignore[no-any-return]
