"""`sluice feedback` against a running ingress and a store API on real chDB."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from typer.testing import CliRunner, Result

from services.cli.main import app as cli_app
from services.telemetry.store import EventStore
from shared.events import utc_now

from tests.ingress.feedback_store import serving_feedback_store, store_accepted
from tests.ingress.support import ApiKeys

pytestmark = [pytest.mark.nats, pytest.mark.redis, pytest.mark.clickhouse]


@pytest.fixture
async def request_id(ingress_nats_url: str, clickhouse_dsn: str, ingress: str) -> AsyncIterator[str]:
    """An acme request that telemetry stored a minute ago, while the store API is served."""
    async with serving_feedback_store(ingress_nats_url, clickhouse_dsn) as store:
        request_id = uuid.uuid4().hex
        await store_accepted(store, "acme", request_id, utc_now() - timedelta(minutes=1))
        yield request_id


async def test_cli_sends_feedback(ingress: str, api_keys: ApiKeys, request_id: str) -> None:
    arguments = ["feedback", request_id, "--kind", "thumbs", "--value", "1", "--metadata", "page=docs"]

    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, [*arguments, "--idempotency-key", "cli-1"])

    assert result.exit_code == 0, result.output
    printed = _printed_json(result)
    assert printed["status"] == "accepted"
    assert printed["idempotency_key"] == "cli-1"


async def test_cli_repeat_prints_duplicate(ingress: str, api_keys: ApiKeys, request_id: str) -> None:
    arguments = ["feedback", request_id, "--kind", "rating", "--value", "4", "--idempotency-key", "cli-2"]

    first = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)
    second = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, arguments)

    assert _printed_json(second)["feedback_id"] == _printed_json(first)["feedback_id"]
    assert _printed_json(second)["status"] == "duplicate"


async def test_cli_prints_generated_key(ingress: str, api_keys: ApiKeys, request_id: str) -> None:
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, ["feedback", request_id, "--kind", "conversion", "--value", "0"])

    assert result.exit_code == 0, result.output
    assert uuid.UUID(_printed_json(result)["idempotency_key"])


async def test_cli_reports_invalid_value(ingress: str, api_keys: ApiKeys, request_id: str) -> None:
    result = await asyncio.to_thread(_run_cli, ingress, api_keys.acme, ["feedback", request_id, "--kind", "rating", "--value", "9"])

    assert result.exit_code == 1
    assert "HTTP 422" in result.output
    # Rich wraps the message at the terminal width.
    assert "between 1 and 5" in " ".join(result.output.split())


def _printed_json(result: Result) -> dict:
    """Return the JSON object the command printed; the in-process store API's log lines may come before it."""
    lines = result.output.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):]))


def _run_cli(ingress: str, api_key: str, arguments: list[str]) -> Result:
    return CliRunner().invoke(cli_app, [*arguments, "--url", ingress, "--api-key", api_key])
