"""`sluice keys create|list|revoke` through the CLI entry point against a real nats-server."""

from __future__ import annotations

import asyncio
import re
import uuid

import nats
import pytest

from shared.api_key_store import API_KEYS_BUCKET
from shared.api_keys import hash_key
from shared.embedded.infrastructure import free_port
from tests.support.keys_cli import create_key, run_keys

pytestmark = pytest.mark.nats


def new_tenant() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


def flat(text: str) -> str:
    """Join the lines that the terminal renderer wrapped, so that a message can be matched whole."""
    return " ".join(text.split())


def read_bucket(nats_url: str) -> dict[str, bytes]:
    """Return every entry of the API key bucket, key id to raw value."""

    async def read() -> dict[str, bytes]:
        connection = await nats.connect(nats_url)
        try:
            kv = await connection.jetstream().key_value(API_KEYS_BUCKET)
            return {key_id: (await kv.get(key_id)).value or b"" for key_id in await kv.keys()}
        finally:
            await connection.close()

    return asyncio.run(read())


def test_create_prints_key_once(nats_url: str) -> None:
    created = create_key(nats_url, new_tenant())

    assert created.plain_key.startswith("sk-sluice-")
    assert created.output.count(created.plain_key) == 1
    assert "cannot show it again" in created.output


def test_bucket_stores_digest_never_key(nats_url: str) -> None:
    tenant = new_tenant()
    created = create_key(nats_url, tenant, "--name", "ci", "--requests-per-minute", "60", "--tokens-per-minute", "9000")

    bucket = read_bucket(nats_url)

    assert all(created.plain_key.encode() not in value for value in bucket.values())
    stored = bucket[created.key_id]
    assert hash_key(created.plain_key).encode() in stored
    assert b'"requests_per_minute":60' in stored
    assert b'"tokens_per_minute":9000' in stored
    assert f'"tenant":"{tenant}"'.encode() in stored


def test_list_shows_key_without_secret(nats_url: str) -> None:
    tenant = new_tenant()
    created = create_key(nats_url, tenant, "--name", "ci", "--tokens-per-minute", "9000")

    exit_code, output = run_keys(nats_url, "list", "--tenant", tenant)

    assert exit_code == 0
    [row] = [line for line in output.splitlines() if line.startswith(created.key_id)]
    assert row.split() == [created.key_id, tenant, "ci", *row.split()[3:5], "-", "-", "9,000", "no"]
    assert created.plain_key not in output


def test_admin_key_stored_and_listed(nats_url: str) -> None:
    tenant = new_tenant()
    created = create_key(nats_url, tenant, "--admin")

    exit_code, output = run_keys(nats_url, "list", "--tenant", tenant)

    assert b'"admin":true' in read_bucket(nats_url)[created.key_id]
    assert "admin:   yes" in created.output
    assert exit_code == 0
    [row] = [line for line in output.splitlines() if line.startswith(created.key_id)]
    assert row.split()[-1] == "yes"
    assert hash_key(created.plain_key) not in output


def test_list_filters_by_tenant(nats_url: str) -> None:
    mine = create_key(nats_url, new_tenant())
    other = create_key(nats_url, new_tenant())

    _exit_code, output = run_keys(nats_url, "list", "--tenant", output_tenant(mine.output))

    assert mine.key_id in output
    assert other.key_id not in output


def output_tenant(create_output: str) -> str:
    [line] = [line for line in create_output.splitlines() if line.startswith("tenant:")]
    return line.split()[1]


def test_list_unknown_tenant_says_none(nats_url: str) -> None:
    exit_code, output = run_keys(nats_url, "list", "--tenant", "nobody-here")

    assert exit_code == 0
    assert "no API keys for tenant nobody-here" in output


def test_revoke_marks_key_revoked(nats_url: str) -> None:
    tenant = new_tenant()
    created = create_key(nats_url, tenant)

    exit_code, output = run_keys(nats_url, "revoke", created.key_id)

    assert exit_code == 0
    assert f"revoked key {created.key_id} of tenant {tenant}" in output
    _exit_code, listing = run_keys(nats_url, "list", "--tenant", tenant)
    [row] = [line for line in listing.splitlines() if line.startswith(created.key_id)]
    fields = row.split()  # id, tenant, name, created date and time, revoked date and time, RPM, TPM
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields[5])


def test_revoke_twice_keeps_first_time(nats_url: str) -> None:
    created = create_key(nats_url, new_tenant())
    _exit_code, first = run_keys(nats_url, "revoke", created.key_id)

    exit_code, second = run_keys(nats_url, "revoke", created.key_id)

    assert exit_code == 0
    assert first.split(" at ")[1] == second.split(" at ")[1]


def test_revoke_unknown_id_fails(nats_url: str) -> None:
    exit_code, output = run_keys(nats_url, "revoke", "0000000000000000")

    assert exit_code == 1
    assert "no API key with id '0000000000000000'" in flat(output)


@pytest.mark.parametrize("tenant", ["Acme", "acme.eu", "acme*", "-acme", "a" * 64, "acme corp", "acme:1"])
def test_create_rejects_unsafe_tenant(nats_url: str, tenant: str) -> None:
    exit_code, output = run_keys(nats_url, "create", "--tenant", tenant)

    assert exit_code == 1
    assert f"invalid tenant name {tenant!r}" in flat(output)


def test_create_rejects_zero_limit(nats_url: str) -> None:
    exit_code, output = run_keys(nats_url, "create", "--tenant", new_tenant(), "--requests-per-minute", "0")

    assert exit_code == 2
    assert "--requests-per-minute" in output


def test_unreachable_nats_fails_clearly() -> None:
    url = f"nats://127.0.0.1:{free_port()}"

    exit_code, output = run_keys(url, "list")

    assert exit_code == 1
    assert f"cannot reach NATS at {url}" in flat(output)
