"""`sluice keys create|list|revoke`: manage API keys in the NATS JetStream key-value bucket.

These commands talk to NATS directly, not to the ingress. Every ingress
replica watches the bucket, so a new or revoked key takes effect within
milliseconds, with no restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from rich.console import Console

from services.cli.nats_buckets import NatsUrlOption, run_on_bucket
from shared.api_key_store import (
    API_KEYS_BUCKET,
    ApiKeyNotFoundError,
    create_api_key,
    list_api_keys,
    open_api_key_bucket,
    revoke_api_key,
)
from shared.api_keys import ApiKeyRecord, InvalidTenantError

T = TypeVar("T")

keys_app = typer.Typer(help="Create, list and revoke API keys. Keys are stored as SHA-256 digests in NATS.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def _run(nats_url: str | None, operation: Callable[[KeyValue], Awaitable[T]]) -> T:
    """Run `operation` on the API key bucket; NATS errors become a clear message and exit code 1."""
    return run_on_bucket(nats_url, API_KEYS_BUCKET, open_api_key_bucket, operation)


@keys_app.command()
def create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for: lowercase letters, digits, '_' and '-'.")],
    name: Annotated[str | None, typer.Option(help="A label to tell the tenant's keys apart, such as 'ci'.")] = None,
    requests_per_minute: Annotated[
        int | None, typer.Option(min=1, help="Maximum requests per minute for this key. Default: unlimited.")
    ] = None,
    tokens_per_minute: Annotated[
        int | None,
        typer.Option(min=1, help="Maximum tokens per minute (estimated prompt tokens plus max_new_tokens). Default: unlimited."),
    ] = None,
    admin: Annotated[
        bool, typer.Option(help="Let the key's analytics SQL (`sluice query`) read every tenant's rows.")
    ] = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Create a key and print it once: only its SHA-256 digest is stored."""

    async def operation(kv: KeyValue) -> ApiKeyRecord:
        created = await create_api_key(
            kv,
            tenant,
            name=name,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            admin=admin,
        )
        console.print(f"key id:  {created.record.key_id}")
        console.print(f"tenant:  {created.record.tenant}")
        if created.record.admin:
            console.print("admin:   yes (analytics SQL reads every tenant's rows)")
        # Printed without rich markup or wrapping so that it can be copied whole.
        typer.echo(f"api key: {created.plain_key}")
        return created.record

    try:
        _run(nats_url, operation)
    except InvalidTenantError as error:
        raise _fail(str(error)) from error
    errors.print("Store the key now: Sluice keeps only its digest and cannot show it again.")


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Show only this tenant's keys.")] = None,
    nats_url: NatsUrlOption = None,
) -> None:
    """Print every key's id, tenant, name, times and limits; never the key or its full digest."""
    records = _run(nats_url, lambda kv: list_api_keys(kv, tenant))
    if not records:
        console.print("no API keys" + (f" for tenant {tenant}" if tenant else ""))
        return
    typer.echo(_keys_table(records))
    typer.echo(
        "RPM, TPM: limits in requests and tokens per minute; - means unlimited. "
        "ADMIN: analytics SQL reads every tenant's rows"
    )


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key id that `sluice keys create` or `sluice keys list` printed.")],
    nats_url: NatsUrlOption = None,
) -> None:
    """Revoke a key: every ingress rejects it with 401 within milliseconds."""

    async def operation(kv: KeyValue) -> ApiKeyRecord:
        try:
            return await revoke_api_key(kv, key_id)
        except ApiKeyNotFoundError as error:
            raise _fail(str(error)) from error
        except KeyWrongLastSequenceError as error:
            raise _fail(f"API key {key_id} changed while it was being revoked; run the command again") from error

    record = _run(nats_url, operation)
    console.print(f"revoked key {record.key_id} of tenant {record.tenant} at {_time(record.revoked_at)} UTC")


def _keys_table(records: list[ApiKeyRecord]) -> str:
    """Return the records as plain columns, like `kubectl get`, so that the output stays whole in a pipe."""
    header = ("ID", "TENANT", "NAME", "CREATED (UTC)", "REVOKED (UTC)", "RPM", "TPM", "ADMIN")
    rows = [header] + [
        (
            record.key_id,
            record.tenant,
            record.name or "-",
            _time(record.created_at),
            _time(record.revoked_at),
            _limit(record.requests_per_minute),
            _limit(record.tokens_per_minute),
            "yes" if record.admin else "no",
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


def _limit(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
