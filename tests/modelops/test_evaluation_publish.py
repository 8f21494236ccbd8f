"""`sluice model eval` publishes a `model.evaluated` event that the telemetry service stores in `model_evals`."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import clickhouse_connect
import pytest
from typer.testing import CliRunner

from services.cli.main import app
from shared.settings import DEFAULT_MODEL_DIR, Settings

# Long enough for telemetry's fetch and insert on a loaded two-core machine; the check polls.
WAIT_S = 30.0
_RUN_LINE = re.compile(r"published model\.evaluated as run (\S+)")
ROWS_SQL = (
    "SELECT model_version, base, adapter, dataset, examples, perplexity, accuracy, metric, blocked_rate,"
    " latency_p50_ms, latency_p95_ms, tokens_per_s, scanner_rates"
    " FROM model_evals FINAL WHERE evaluation_id = {run:String}"
)


def _heldout(folder: Path) -> Path:
    dataset = folder / "romeo.jsonl"
    rows = [{"prompt": "ROMEO:\n", "completion": "Ay me.\n"}, {"prompt": "JULIET:\n", "completion": "O Romeo.\n"}]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return dataset


def run_eval(*arguments: str) -> tuple[int, str]:
    """Run `sluice model eval` on the committed model; return the exit code and the output, its whitespace collapsed."""
    result = CliRunner().invoke(app, ["model", "eval", str(DEFAULT_MODEL_DIR), "--max-new-tokens", "4", *arguments])
    return result.exit_code, " ".join(result.output.split())


async def _rows(dsn: str, run_id: str) -> list[tuple]:
    client = clickhouse_connect.get_client(dsn=dsn)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            rows = (await asyncio.to_thread(client.query, ROWS_SQL, {"run": run_id})).result_rows
            if rows or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)
    finally:
        client.close()


async def test_published_eval_lands_in_model_evals(telemetry_app: Settings, nats_url: str, tmp_path: Path) -> None:
    tenant = f"eval-{uuid.uuid4().hex[:8]}"
    arguments = ["--dataset", str(_heldout(tmp_path)), "--model-version", "romeo-v1", "--tenant", tenant, "--nats-url", nats_url]

    exit_code, output = await asyncio.to_thread(run_eval, *arguments)

    assert exit_code == 0, output
    run = _RUN_LINE.search(output)
    assert run is not None, output
    rows = await _rows(telemetry_app.resolved_clickhouse_dsn, run.group(1))
    assert len(rows) == 1
    version, base, adapter, dataset, examples, perplexity, accuracy, metric, blocked, p50, p95, tokens_per_s, rates = rows[0]
    assert (version, base, adapter, dataset, examples, metric) == ("romeo-v1", DEFAULT_MODEL_DIR.name, None, "romeo", 2, "first_line_exact_match")
    assert perplexity > 1.0
    assert accuracy == 0.0
    assert blocked == 0.0
    assert 0 < p50 <= p95
    assert tokens_per_s > 0
    assert set(rates) == {"BanSubstrings", "PrivateKey", "AwsAccessKey", "NoRefusalLight"}


def test_no_publish_prints_table_only(tmp_path: Path) -> None:
    # An unreachable NATS URL: the run must not try to publish.
    exit_code, output = run_eval("--dataset", str(_heldout(tmp_path)), "--no-publish", "--nats-url", "nats://127.0.0.1:1")

    assert exit_code == 0, output
    assert "perplexity" in output
    assert "published" not in output


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "absent.jsonl"], "cannot read the held-out file"),
        (["--adapter", "."], "no LoRA adapter"),
        (["--tenant", "a.b"], "tenant"),
    ],
)
def test_bad_input_named_before_work(tmp_path: Path, arguments: list[str], message: str) -> None:
    defaults = ["--dataset", str(_heldout(tmp_path))] if "--dataset" not in arguments else []

    exit_code, output = run_eval(*defaults, *arguments, "--no-publish")

    assert exit_code == 1
    assert message in output
