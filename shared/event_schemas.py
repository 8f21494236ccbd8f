"""Writing and reading the JSON Schemas in `schemas/events/`, generated from the models in `shared/events.py`.

Run `python -m shared.event_schemas` after changing a payload model; the test
suite fails while a file and its model disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shared.events import CURRENT_SCHEMA_VERSION, PAYLOAD_MODELS, Envelope, EventType
from shared.settings import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas" / "events"
ENVELOPE_SCHEMA_FILE = "envelope.json"


def schema_file(event_type: EventType) -> str:
    return f"{event_type.value}.json"


def expected_schemas() -> dict[str, dict[str, Any]]:
    """Return every schema file name with the schema its model generates now."""
    schemas = {ENVELOPE_SCHEMA_FILE: _with_header(Envelope.model_json_schema(), "envelope")}
    for event_type, model in PAYLOAD_MODELS.items():
        schemas[schema_file(event_type)] = _with_header(model.model_json_schema(), event_type.value)
    return schemas


def _with_header(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"sluice/events/{name}/v{CURRENT_SCHEMA_VERSION}",
        **schema,
    }


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in expected_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_schemas():
        sys.stdout.write(f"wrote {path.relative_to(REPO_ROOT)}\n")
