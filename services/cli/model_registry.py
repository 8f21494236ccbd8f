"""`sluice model register` and `sluice model list`: the model registry in the NATS key-value bucket `sluice_models`.

These commands talk to NATS directly. The model server reads the registry
when it starts and serves every registered adapter of its model under the
registered name, so an experiment variant's `adapter_id: NAME` selects it
after the model server's next restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import nats
import nats.errors
import typer
from nats.js.kv import KeyValue
from rich.console import Console
from rich.table import Table

from services.cli.nats_buckets import CONNECT_TIMEOUT_S, NatsUrlOption, fail, run_on_bucket
from shared.model_registry import (
    MODELS_BUCKET,
    QUANTIZATIONS,
    EvalSummary,
    ModelKind,
    ModelRecord,
    RegistryError,
    list_models,
    new_record,
    open_model_registry,
    register_model,
)
from shared.settings import get_settings
from shared.store_client import StoreClient, StoreError

console = Console()

# `--eval-run latest` copies the newest evaluation stored for the registered name.
LATEST_RUN = "latest"
_EVAL_COLUMNS = ", ".join(name if name != "evaluated_at" else "ts AS evaluated_at" for name in EvalSummary.model_fields)
_RUN_SQL = f"SELECT {_EVAL_COLUMNS} FROM model_evals FINAL WHERE evaluation_id = {{run:String}} ORDER BY ts DESC LIMIT 1"
_LATEST_SQL = f"SELECT {_EVAL_COLUMNS} FROM model_evals FINAL WHERE model_version = {{name:String}} ORDER BY ts DESC LIMIT 1"


def register_command(
    name: Annotated[str, typer.Argument(help="The registry name, also the adapter id that requests and variants use.")],
    path: Annotated[Path, typer.Option(help="The folder: a model that save_pretrained wrote, or a peft adapter with --adapter.")],
    base: Annotated[
        str | None, typer.Option(help="The registered model this one derives from; required for an adapter.")
    ] = None,
    adapter: Annotated[bool, typer.Option("--adapter", help="The folder is a peft LoRA adapter over --base.")] = False,
    quantization: Annotated[
        str | None, typer.Option(help=f"The folder's quantization scheme: {', '.join(QUANTIZATIONS)}.")
    ] = None,
    dataset_hash: Annotated[str | None, typer.Option(help="SHA-256 of the data the model was trained on.")] = None,
    eval_run: Annotated[
        str | None,
        typer.Option(help="Copy this `sluice model eval` run's figures from telemetry; `latest` takes the newest run of NAME."),
    ] = None,
    replace: Annotated[bool, typer.Option(help="Overwrite a registration of the same name.")] = False,
    nats_url: NatsUrlOption = None,
) -> None:
    """Register a model or adapter folder with its lineage, for the model server and experiment variants to name."""
    kind = ModelKind.ADAPTER if adapter else ModelKind.MODEL
    try:
        record = new_record(name, path, kind=kind, base=base, quantization=quantization, dataset_sha256=dataset_hash)
    except RegistryError as error:
        raise fail(str(error)) from error
    if eval_run is not None:
        summary = asyncio.run(_fetch_eval(nats_url or get_settings().resolved_nats_url, name, eval_run))
        record = record.model_copy(update={"eval": summary})

    async def operation(kv: KeyValue) -> ModelRecord:
        try:
            return await register_model(kv, record, replace=replace)
        except RegistryError as error:
            raise fail(str(error)) from error

    stored = run_on_bucket(nats_url, MODELS_BUCKET, open_model_registry, operation)
    console.print(f"registered {stored.kind.value} {stored.name}: {stored.path}")


def list_command(nats_url: NatsUrlOption = None) -> None:
    """List the registered models and adapters with their lineage and latest copied evaluation."""

    async def operation(kv: KeyValue) -> list[ModelRecord]:
        try:
            return await list_models(kv)
        except ValueError as error:
            raise fail(f"the registry bucket {MODELS_BUCKET} contains an invalid record: {error}") from error

    records = run_on_bucket(nats_url, MODELS_BUCKET, open_model_registry, operation)
    if not records:
        console.print("no model registered yet; `sluice model register NAME --path DIR` adds one")
        return
    console.print(registry_table(records))


def registry_table(records: list[ModelRecord]) -> Table:
    """Build the table of registry records, one row each."""
    table = Table(title="model registry", show_header=True)
    # Names and bases are what an operator copies into experiments.yaml, so they are never wrapped.
    table.add_column("name", no_wrap=True)
    table.add_column("kind")
    table.add_column("base", no_wrap=True)
    for header in ("quantization", "data sha256", "accuracy", "perplexity", "created"):
        table.add_column(header)
    table.add_column("path", overflow="fold")
    for record in records:
        evaluation = record.eval
        table.add_row(
            record.name,
            record.kind.value,
            record.base or "-",
            record.quantization or "-",
            (record.dataset_sha256 or "-")[:12],
            f"{evaluation.accuracy:.1%} ({evaluation.metric})" if evaluation else "-",
            f"{evaluation.perplexity:.2f}" if evaluation else "-",
            record.created_at.strftime("%Y-%m-%d %H:%M"),
            record.path,
        )
    return table


async def _fetch_eval(nats_url: str, name: str, eval_run: str) -> EvalSummary:
    """Read the evaluation's `model_evals` row through telemetry's store API; raise `typer.Exit` when there is none."""
    sql, parameters = (_LATEST_SQL, {"name": name}) if eval_run == LATEST_RUN else (_RUN_SQL, {"run": eval_run})
    try:
        connection = await nats.connect(nats_url, connect_timeout=CONNECT_TIMEOUT_S, allow_reconnect=False, max_reconnect_attempts=1)
    except (nats.errors.Error, OSError) as error:
        raise fail(f"cannot reach NATS at {nats_url} ({error}) to read evaluation {eval_run}; start the stack or leave out --eval-run") from error
    try:
        page = await StoreClient(connection).query(sql, parameters)
    except StoreError as error:
        raise fail(f"reading evaluation {eval_run} from telemetry failed: {error}") from error
    finally:
        await connection.close()
    if not page.rows:
        target = f"no evaluation of {name!r}" if eval_run == LATEST_RUN else f"no evaluation with run id {eval_run!r}"
        raise fail(f"{target} is stored in model_evals; run `sluice model eval` first, or check the id it printed")
    return EvalSummary.model_validate(_row(page.columns, page.rows[0]))


def _row(columns: list[str], values: list[Any]) -> dict[str, Any]:
    return dict(zip(columns, values, strict=True))
