"""Reading the cost model's inputs from YAML: the GPU catalogue, the fields common to every scenario, and the scenarios.

The file has three top-level keys (`shared/config/tco.yaml` is the example):

- `gpus`: GPU type name to `GpuSpec` fields;
- `common`: scenario fields that every scenario takes unless it sets its own.
  A scenario's key replaces the common one whole (a `traffic` mapping too);
- `scenarios`: a list of scenario mappings, each with a unique `name`.

Every check runs when the file is read, so a bad input fails before any output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.modelops.tco import GpuSpec, Scenario, TcoInputError, lookup_gpu
from shared.settings import DEFAULT_CONFIG_DIR
from shared.store_client import describe_validation_error

DEFAULT_TCO_FILE = DEFAULT_CONFIG_DIR / "tco.yaml"
_TOP_LEVEL_KEYS = {"gpus", "common", "scenarios"}


@dataclass(frozen=True)
class TcoInputs:
    """A validated scenario file: the catalogue, the common fields, and each scenario with its merged fields."""

    gpus: dict[str, GpuSpec]
    common: dict[str, Any]
    scenarios: list[Scenario]
    # Each scenario's fields as the file gives them after merging `common`,
    # so that a command-line scenario can start from one of them.
    scenario_fields: dict[str, dict[str, Any]]


def load_tco_file(path: Path = DEFAULT_TCO_FILE, base_gpus: dict[str, GpuSpec] | None = None) -> TcoInputs:
    """Read and validate a scenario file, or raise `TcoInputError` naming the file and the field.

    `base_gpus` is a catalogue that the file's `gpus` add to, an entry of the
    same name replaced by the file's. A file without `gpus` then uses it whole.
    """
    document = _read_mapping(path)
    unknown = sorted(set(document) - _TOP_LEVEL_KEYS)
    if unknown:
        raise TcoInputError(f"{path}: unknown top-level keys {unknown}; allowed: gpus, common, scenarios")

    gpus = {**(base_gpus or {}), **_parse_gpus(path, document.get("gpus") or {})}
    common = document.get("common") or {}
    if not isinstance(common, dict):
        raise TcoInputError(f"{path}: common: expected a mapping of scenario fields, got {type(common).__name__}")
    entries = document.get("scenarios")
    if not isinstance(entries, list) or not entries:
        raise TcoInputError(f"{path}: scenarios: missing or empty; list at least one scenario mapping")

    merged = [_merge(path, index, common, entry) for index, entry in enumerate(entries)]
    scenarios = [build_scenario(fields, f"{path}: scenarios[{index}]", gpus) for index, fields in enumerate(merged)]
    _check_unique_names(path, scenarios)
    return TcoInputs(gpus, common, scenarios, {scenario.name: fields for scenario, fields in zip(scenarios, merged)})


def build_scenario(fields: dict[str, Any], where: str, gpus: dict[str, GpuSpec]) -> Scenario:
    """Validate `fields` as a `Scenario` whose GPU is in `gpus`; `where` starts each error message."""
    name = fields.get("name")
    label = f"{where} ({name})" if name else where
    try:
        scenario = Scenario.model_validate(fields)
    except ValidationError as error:
        raise TcoInputError(f"{label}: {describe_validation_error(error)}") from error
    lookup_gpu(gpus, scenario, label)
    return scenario


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TcoInputError(f"cannot read the scenario file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise TcoInputError(f"the scenario file {path} is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise TcoInputError(f"{path}: expected a mapping with gpus, common and scenarios, got {type(document).__name__}")
    return document


def _parse_gpus(path: Path, entries: Any) -> dict[str, GpuSpec]:
    if not isinstance(entries, dict):
        raise TcoInputError(f"{path}: gpus: expected a mapping of GPU type name to its fields")
    gpus = {}
    for name, fields in entries.items():
        try:
            gpus[str(name)] = GpuSpec.model_validate(fields)
        except ValidationError as error:
            raise TcoInputError(f"{path}: gpus.{name}: {describe_validation_error(error)}") from error
    return gpus


def _merge(path: Path, index: int, common: dict[str, Any], entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise TcoInputError(f"{path}: scenarios[{index}]: expected a mapping of scenario fields")
    return {**common, **entry}


def _check_unique_names(path: Path, scenarios: list[Scenario]) -> None:
    seen: set[str] = set()
    for scenario in scenarios:
        if scenario.name in seen:
            raise TcoInputError(f"{path}: scenarios: the name {scenario.name!r} appears twice; names must be unique")
        seen.add(scenario.name)
