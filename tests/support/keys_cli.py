"""Running `sluice keys` through the CLI entry point, as an operator would, and reading its output."""

from __future__ import annotations

import re
from dataclasses import dataclass

from typer.testing import CliRunner

from services.cli.main import app

_KEY_ID_LINE = re.compile(r"^key id:\s+(\S+)$", re.MULTILINE)
_API_KEY_LINE = re.compile(r"^api key:\s+(\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    plain_key: str
    output: str


def run_keys(nats_url: str, *arguments: str) -> tuple[int, str]:
    """Run `sluice keys ARGUMENTS --nats-url NATS_URL`; return the exit code and stdout with stderr."""
    result = CliRunner().invoke(app, ["keys", *arguments, "--nats-url", nats_url])
    return result.exit_code, result.output


def create_key(nats_url: str, tenant: str, *options: str) -> CreatedKey:
    """Create a key with `sluice keys create`; raise AssertionError with the output when it fails."""
    exit_code, output = run_keys(nats_url, "create", "--tenant", tenant, *options)
    key_id = _KEY_ID_LINE.search(output)
    plain_key = _API_KEY_LINE.search(output)
    if exit_code != 0 or key_id is None or plain_key is None:
        raise AssertionError(f"`sluice keys create` failed with exit code {exit_code}: {output}")
    return CreatedKey(key_id.group(1), plain_key.group(1), output)
