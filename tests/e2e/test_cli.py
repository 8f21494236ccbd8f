"""The `sluice` console script against the running embedded stack, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.embedded.stack import EmbeddedStack

pytestmark = pytest.mark.stack

# The CLI imports rich and httpx and then waits on generation; a minute is ample.
CLI_TIMEOUT_S = 120


def run_cli(stack: EmbeddedStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLUICE_URL": stack.http_url, "SLUICE_API_KEY": stack.api_key, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_submit_streams_and_reports_status(stack: EmbeddedStack) -> None:
    result = run_cli(stack, "submit", "Write a sonnet about the sea", "--max-new-tokens", "16")

    assert result.returncode == 0, result.stderr
    assert "status: completed" in result.stdout


def test_submit_blocked_prompt_names_scanner(stack: EmbeddedStack) -> None:
    result = run_cli(stack, "submit", "my key is AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")

    assert result.returncode == 0, result.stderr
    assert "status: blocked" in result.stdout
    assert "Secrets" in result.stdout


def test_demo_prints_summary(stack: EmbeddedStack, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"text": "Praise the morning.", "label": "benign"}, {"text": "Curse the night.", "label": "benign"}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))

    result = run_cli(stack, "demo", "--prompts", str(prompts), "--limit", "2", "--max-new-tokens", "8")

    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout
    assert "TTFT p50" in result.stdout


def test_demo_rejects_malformed_file(stack: EmbeddedStack, tmp_path: Path) -> None:
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "no text field"}\n')

    result = run_cli(stack, "demo", "--prompts", str(prompts))

    assert result.returncode == 1
    assert "bad.jsonl:1" in result.stderr
    assert '"text"' in result.stderr


def test_report_prints_summary(stack: EmbeddedStack) -> None:
    run_cli(stack, "submit", "Speak, briefly.", "--max-new-tokens", "4")

    result = run_cli(stack, "report")

    assert result.returncode == 0, result.stderr
    assert "report summary" in result.stdout
    assert "requests" in result.stdout
