"""The model registry: models and LoRA adapters with their lineage, one record per name in a NATS key-value bucket.

A record names a folder on disk (a model written by `save_pretrained`, or a
peft adapter), the registered base it derives from, its quantization, the
digest of the data it was trained on and the figures of an evaluation run.
The bucket is runtime configuration like the API keys: `sluice model
register` writes it and the model server reads it when it starts, loading
every registered adapter of the model it serves. A folder path is stored
absolute, so it must be readable at that path by every process that loads it.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from shared.runtime_config import ensure_bucket

MODELS_BUCKET = "sluice_models"
_BUCKET_DESCRIPTION = "Sluice model registry: one record per model or adapter name, with its folder and lineage"

# The quantization schemes a record may name, the labels that an experiment variant's `quantization` uses too.
QUANTIZATIONS = ("int8", "int4", "awq", "gptq")
MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
# peft's name for "no adapter", which the model server rejects as an adapter id.
RESERVED_NAMES = frozenset({"__base__"})
# A NATS key-value key allows these characters, but not a leading or trailing
# ".". "/" and "=" are left out, so a name is also a plain folder name.
_NAME = re.compile(r"^[A-Za-z0-9_-]([A-Za-z0-9_.-]{0,126}[A-Za-z0-9_-])?$")


class RegistryError(ValueError):
    """A registration is invalid: a bad name, a missing folder, an unknown base, or a name already taken."""


class ModelKind(str, Enum):
    MODEL = "model"
    ADAPTER = "adapter"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSummary(_Model):
    """The figures of one `sluice model eval` run, copied from its `model_evals` row."""

    evaluation_id: str
    evaluated_at: datetime
    dataset: str
    dataset_sha256: str
    examples: int
    metric: str
    accuracy: float
    perplexity: float
    blocked_rate: float
    flagged_rate: float
    latency_p50_ms: float
    latency_p95_ms: float
    tokens_per_s: float


class ModelRecord(_Model):
    """A registered model or adapter and its lineage."""

    name: str
    kind: ModelKind
    # The folder's absolute path.
    path: str
    # The registered model it derives from: an adapter's base, or the model a quantized one was made from.
    base: str | None = None
    quantization: str | None = None
    # SHA-256 hex digest of the training data, as the fine-tuning run reported it.
    dataset_sha256: str | None = None
    eval: EvalSummary | None = None
    created_at: datetime

    def to_json(self) -> bytes:
        """Serialize the record without its name, which is the bucket key."""
        return self.model_dump_json(exclude={"name"}).encode()

    @classmethod
    def from_json(cls, name: str, data: bytes) -> ModelRecord:
        """Parse a bucket value stored under `name`; raise `ValueError` (pydantic's `ValidationError`) when invalid."""
        fields: Any = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError(f"model {name}: the value must be a JSON object, got {type(fields).__name__}")
        return cls.model_validate({**fields, "name": name})


def check_name(name: str) -> str:
    """Return `name` when it can be a registry key and an adapter id; raise `RegistryError` otherwise."""
    if not _NAME.match(name) or name in RESERVED_NAMES:
        raise RegistryError(
            f"invalid model name {name!r}: use 1 to 128 letters, digits, '_', '-' and '.', "
            "not starting or ending with '.', and not __base__"
        )
    return name


def new_record(
    name: str,
    path: Path,
    *,
    kind: ModelKind,
    base: str | None = None,
    quantization: str | None = None,
    dataset_sha256: str | None = None,
    eval_summary: EvalSummary | None = None,
) -> ModelRecord:
    """Build a record after checking the name, the folder's contents and the quantization; raise `RegistryError`.

    The base is checked against the bucket when the record is stored, by `register_model`.
    """
    check_name(name)
    _check_folder(path, kind)
    if kind is ModelKind.ADAPTER and base is None:
        raise RegistryError(f"adapter {name!r} needs --base: the registered model it was trained on")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise RegistryError(f"invalid quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    return ModelRecord(
        name=name,
        kind=kind,
        path=str(path.resolve()),
        base=base,
        quantization=quantization,
        dataset_sha256=dataset_sha256,
        eval=eval_summary,
        created_at=datetime.now(UTC),
    )


def _check_folder(path: Path, kind: ModelKind) -> None:
    if not path.is_dir():
        raise RegistryError(f"the folder {path} does not exist; pass --path the folder that save_pretrained wrote")
    marker = ADAPTER_CONFIG if kind is ModelKind.ADAPTER else MODEL_CONFIG
    if not (path / marker).is_file():
        hint = "a peft adapter folder" if kind is ModelKind.ADAPTER else "a model folder, or add --adapter for a peft adapter"
        raise RegistryError(f"{path} contains no {marker}, so it is not {hint}")


async def open_model_registry(js: JetStreamContext) -> KeyValue:
    """Open the registry bucket, creating it on first use; raises `shared.runtime_config.RuntimeConfigError`."""
    return await ensure_bucket(js, MODELS_BUCKET, _BUCKET_DESCRIPTION)


async def register_model(kv: KeyValue, record: ModelRecord, *, replace: bool = False) -> ModelRecord:
    """Store `record` under its name and return it.

    Raises `RegistryError` when its base is not a registered model, or when
    the name is taken and `replace` is false.
    """
    if record.base is not None:
        base = await get_model(kv, record.base)
        if base is None or base.kind is not ModelKind.MODEL:
            raise RegistryError(
                f"unknown base {record.base!r}: register the base model first "
                "(`sluice model register NAME --path DIR`); `sluice model list` shows the registered models"
            )
    if replace:
        await kv.put(record.name, record.to_json())
        return record
    try:
        await kv.create(record.name, record.to_json())
    except KeyWrongLastSequenceError as error:
        raise RegistryError(f"the name {record.name!r} is already registered; pass --replace to overwrite it") from error
    return record


async def get_model(kv: KeyValue, name: str) -> ModelRecord | None:
    """Return the record registered as `name`, or None; an invalid value raises `ValueError`."""
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:
        return None
    return ModelRecord.from_json(name, entry.value or b"")


async def list_models(kv: KeyValue) -> list[ModelRecord]:
    """Return every record, sorted by name; an invalid value raises `ValueError`."""
    try:
        names = await kv.keys()
    except NoKeysError:
        return []
    records = [await get_model(kv, name) for name in sorted(names)]
    return [record for record in records if record is not None]


def adapters_of(records: list[ModelRecord], model_dir: Path) -> list[ModelRecord]:
    """Return the adapters whose base is registered at the folder `model_dir`, sorted by name."""
    served = str(model_dir.resolve())
    bases = {record.name for record in records if record.kind is ModelKind.MODEL and record.path == served}
    return [record for record in records if record.kind is ModelKind.ADAPTER and record.base in bases]
