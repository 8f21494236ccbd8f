"""`sluice config show|set`: read and change the experiments and the screening policy in NATS.

Both live in the JetStream key-value bucket `sluice_config` (see
`shared.config_store`). Every replica of the services watches its key, so a
value set here takes effect without a restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from rich.console import Console

from services.cli.nats_buckets import NatsUrlOption, fail, run_on_bucket
from shared.config_store import (
    CONFIG_BUCKET,
    CONFIG_KEYS,
    EXPERIMENTS_KEY,
    experiments_validator,
    open_config_bucket,
    validate_policy,
    value_source,
)
from shared.scanning import Policy, build_input_chain, build_output_chain, configure_scanner_runtime
from shared.settings import get_settings

config_app = typer.Typer(
    help="Show and change the experiments and the screening policy that every service watches in NATS.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

NameArgument = Annotated[str, typer.Argument(help=f"The configuration to use: {' or '.join(CONFIG_KEYS)}.")]


@config_app.command()
def show(name: NameArgument, nats_url: NatsUrlOption = None) -> None:
    """Print the YAML stored as NAME on stdout and its revision on stderr.

    `sluice config show NAME > FILE` gives a file to edit and pass to `sluice config set`.
    """
    _check_name(name)

    async def operation(kv: KeyValue) -> KeyValue.Entry:
        try:
            return await kv.get(name)
        except KeyNotFoundError as error:
            raise fail(
                f"{value_source(name)} is not set: a service seeds it from its file when it starts, "
                f"or run `sluice config set {name} FILE`"
            ) from error

    entry = run_on_bucket(nats_url, CONFIG_BUCKET, open_config_bucket, operation)
    typer.echo((entry.value or b"").decode("utf-8"), nl=False)
    errors.print(f"{value_source(name)} revision {entry.revision}")


@config_app.command("set")
def set_value(
    name: NameArgument,
    file: Annotated[Path, typer.Argument(help="A YAML file in the format of shared/config/NAME.yaml.")],
    nats_url: NatsUrlOption = None,
) -> None:
    """Validate FILE and store it as NAME; print the new revision.

    FILE is checked as the services check it: experiments against the
    schema and the backends in SLUICE_BACKENDS_FILE, a policy against the
    schema and by building its scanners, which takes a few seconds. An
    invalid file is rejected and the stored value stays. Each service
    checks the value again with its own backends file and environment, and
    keeps its previous value (logging `runtime_config_invalid`) when the check fails.
    """
    _check_name(name)
    data = _read(file)
    _validate(name, _decode(data, file), str(file))

    async def operation(kv: KeyValue) -> int:
        return await kv.put(name, data)

    revision = run_on_bucket(nats_url, CONFIG_BUCKET, open_config_bucket, operation)
    console.print(f"{value_source(name)} is now revision {revision}; running services apply it without a restart")


def _check_name(name: str) -> None:
    if name not in CONFIG_KEYS:
        raise fail(f"unknown configuration {name!r}; use one of: {', '.join(CONFIG_KEYS)}")


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as error:
        raise fail(f"cannot read {file} ({error.strerror or error}); pass the path of a YAML file") from error


def _decode(data: bytes, file: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise fail(f"{file} is not UTF-8 text ({error}); save it as UTF-8") from error


def _validate(name: str, text: str, source: str) -> None:
    """Raise `typer.Exit` with every problem the services would find in `text`; nothing is written then."""
    try:
        if name == EXPERIMENTS_KEY:
            experiments_validator(get_settings())(text, source)
        else:
            configure_scanner_runtime()
            validate_policy(text, source, _build_chains)
    except ValueError as error:
        raise fail(f"{error}\nnothing was written; fix the file and run the command again") from error


def _build_chains(policy: Policy) -> None:
    # Safety builds the input section and moderation the output section, so both must build.
    build_input_chain(policy)
    build_output_chain(policy)
