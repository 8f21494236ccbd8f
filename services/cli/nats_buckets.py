"""Opening a NATS JetStream key-value bucket for one CLI command, with errors an operator can act on.

The `sluice keys` and `sluice config` commands talk to NATS directly, not to
the ingress, because every service watches the buckets they write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import nats
import nats.errors
import typer
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from rich.console import Console
from rich.markup import escape

from shared.runtime_config import RuntimeConfigError
from shared.settings import get_settings

T = TypeVar("T")

BucketOpener = Callable[[JetStreamContext], Awaitable[KeyValue]]

errors = Console(stderr=True)

# NATS on the same host or network responds in milliseconds. A server that is
# down fails the command within a few seconds instead of hanging the terminal.
CONNECT_TIMEOUT_S = 2.0

NatsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--nats-url",
        envvar="SLUICE_NATS_URL",
        help="NATS server URL. Default: the embedded stack's, nats://SLUICE_HOST:SLUICE_NATS_PORT.",
        show_default=False,
    ),
]


def fail(message: str) -> typer.Exit:
    """Print `message` as an error on stderr and return the exit (code 1) for the caller to raise."""
    # Escaped because messages quote YAML and key paths such as `input[2]`, which rich would read as markup.
    errors.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=1)


async def _ignore_error(_error: Exception) -> None:
    """Keep nats-py from logging each failed connection attempt; the command reports the failure once."""


@asynccontextmanager
async def open_bucket(nats_url: str, open_kv: BucketOpener) -> AsyncIterator[KeyValue]:
    """Connect to NATS once (no reconnects) and open a bucket with `open_kv`; raise `typer.Exit` with a clear error."""
    try:
        connection = await nats.connect(
            nats_url,
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=_ignore_error,
        )
    except (nats.errors.Error, OSError) as error:
        raise fail(
            f"cannot reach NATS at {nats_url} ({error}); start the stack with `sluice up`, "
            "or set --nats-url or SLUICE_NATS_URL to a running server"
        ) from error
    try:
        yield await open_kv(connection.jetstream())
    except RuntimeConfigError as error:
        raise fail(f"{error}; check that JetStream is enabled on {nats_url}") from error
    finally:
        await connection.close()


def run_on_bucket(
    nats_url: str | None, bucket: str, open_kv: BucketOpener, operation: Callable[[KeyValue], Awaitable[T]]
) -> T:
    """Run `operation` on the bucket that `open_kv` opens; NATS errors become a clear message and exit code 1.

    `bucket` is the bucket's name, for the messages.
    """
    url = nats_url or get_settings().resolved_nats_url

    async def run() -> T:
        async with open_bucket(url, open_kv) as kv:
            try:
                return await operation(kv)
            except nats.errors.Error as error:
                raise fail(f"the bucket {bucket} on {url} did not respond ({error!r}); retry, or check the NATS server") from error

    return asyncio.run(run())
