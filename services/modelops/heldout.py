"""A held-out set of prompt and completion pairs, and the task metric that scores a generated output against it.

The set is a JSONL file with one `{"prompt": str, "completion": str}` object
per line, the format that fine-tuning reads. An optional manifest next to it,
`NAME.manifest.json` for `NAME.jsonl`, may name the set and its task metric:
`{"name": "romeo-lines", "metric": "exact_match"}`. Without one, the name is
the file's stem and the metric `DEFAULT_METRIC`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MANIFEST_SUFFIX = ".manifest.json"
_WHITESPACE = re.compile(r"\s+")


class HeldOutDataError(ValueError):
    """The held-out file or its manifest is missing or invalid; the message names the file, line and field."""


@dataclass(frozen=True)
class HeldOutExample:
    prompt: str
    completion: str


@dataclass(frozen=True)
class HeldOutSet:
    """The examples of one held-out file, with the name, digest and metric that results are stored under."""

    name: str
    # SHA-256 hex digest of the whole file's bytes, so a changed file shows as another data set.
    sha256: str
    metric: str
    examples: tuple[HeldOutExample, ...]


def normalise(text: str) -> str:
    """Strip `text` and collapse every run of whitespace to one space."""
    return _WHITESPACE.sub(" ", text).strip()


def first_line(text: str) -> str:
    """Return the first line of `text` that is not blank, normalised; "" when every line is blank."""
    for line in text.splitlines():
        if line.strip():
            return normalise(line)
    return ""


def exact_match(output: str, reference: str) -> bool:
    """Return whether the whole normalised output equals the normalised reference."""
    return normalise(output) == normalise(reference)


def first_line_exact_match(output: str, reference: str) -> bool:
    """Return whether the first non-blank line of the output equals the reference's, both normalised."""
    return first_line(output) == first_line(reference)


def prefix_match(output: str, reference: str) -> bool:
    """Return whether the normalised output starts with the normalised reference."""
    return normalise(output).startswith(normalise(reference))


# Metric name -> check of one generated output against its reference completion.
METRICS: dict[str, Callable[[str, str], bool]] = {
    "exact_match": exact_match,
    "first_line_exact_match": first_line_exact_match,
    "prefix_match": prefix_match,
}
# Generation runs to a fixed `max_new_tokens` unless the model ends its text,
# so the output usually runs past a one-line reference. Comparing first lines
# scores the line that the reference asks for and ignores what follows it.
DEFAULT_METRIC = "first_line_exact_match"


def load_heldout(path: Path, max_examples: int | None = None) -> HeldOutSet:
    """Read the held-out file at `path` and its manifest, keeping the first `max_examples` examples (all when None).

    Raises `HeldOutDataError` for a missing file, a line that is not a JSON
    object with string `prompt` and `completion` fields, an empty completion,
    a file without examples, or an invalid manifest.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise HeldOutDataError(f"cannot read the held-out file {path}: {error.strerror}") from error
    name, metric = _read_manifest(path)
    examples = _parse_lines(path, data.decode("utf-8", errors="replace"))
    if not examples:
        raise HeldOutDataError(f"the held-out file {path} contains no example; write one JSON object per line")
    selected = examples if max_examples is None else examples[:max_examples]
    return HeldOutSet(name=name, sha256=hashlib.sha256(data).hexdigest(), metric=metric, examples=tuple(selected))


def _parse_lines(path: Path, text: str) -> list[HeldOutExample]:
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            examples.append(_parse_example(path, number, line))
    return examples


def _parse_example(path: Path, number: int, line: str) -> HeldOutExample:
    where = f"{path} line {number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise HeldOutDataError(f"{where} is not valid JSON: {error.msg}") from error
    if not isinstance(row, dict):
        raise HeldOutDataError(f"{where} is a JSON {type(row).__name__}; expected an object with prompt and completion")
    for field in ("prompt", "completion"):
        if not isinstance(row.get(field), str):
            raise HeldOutDataError(f"{where}: the field {field!r} is missing or not a string; every line needs prompt and completion")
    if not row["completion"].strip():
        raise HeldOutDataError(f"{where}: the completion is empty, so there is nothing to score")
    return HeldOutExample(prompt=row["prompt"], completion=row["completion"])


def manifest_path(path: Path) -> Path:
    """Return where the manifest of the held-out file `path` would be: `NAME.manifest.json` beside `NAME.jsonl`."""
    return path.with_name(path.stem + MANIFEST_SUFFIX)


def _read_manifest(path: Path) -> tuple[str, str]:
    manifest_file = manifest_path(path)
    if not manifest_file.is_file():
        return path.stem, DEFAULT_METRIC
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise HeldOutDataError(f"cannot read the manifest {manifest_file}: {error}") from error
    if not isinstance(manifest, dict):
        raise HeldOutDataError(f"the manifest {manifest_file} must be a JSON object with optional name and metric")
    metric = manifest.get("metric", DEFAULT_METRIC)
    if metric not in METRICS:
        raise HeldOutDataError(f"the manifest {manifest_file} names the metric {metric!r}; use one of {sorted(METRICS)}")
    name = manifest.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise HeldOutDataError(f"the manifest {manifest_file} has an invalid name {name!r}; use a non-empty string")
    return name, metric
