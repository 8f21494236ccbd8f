"""Writing a scanner policy to a YAML file, as services read it from `policy_file`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


def write_policy_file(tmp_path_factory: pytest.TempPathFactory, name: str, policy: dict[str, Any]) -> Path:
    """Write `policy` to `policy.yaml` in a new temporary folder named after `name`, and return the file's path."""
    path = tmp_path_factory.mktemp(name) / "policy.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    return path
