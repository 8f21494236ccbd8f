"""`sluice model eval`: score a model version on a held-out set and publish the figures as a `model.evaluated` event.

The output scanners are the policy's, built as the moderation service builds
them for the event's tenant. Telemetry stores the event and copies it into
the `model_evals` table, so `sluice query "SELECT * FROM model_evals"` with a
key of that tenant compares runs of a version over time.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.cli.event_publishing import publish_envelopes
from services.cli.nats_buckets import NatsUrlOption, fail
from services.modelops.heldout import HeldOutDataError, HeldOutSet, load_heldout
from shared.api_keys import DEV_TENANT
from shared.events import Envelope, EventType, ModelEvaluatedPayload, derive_event_id, utc_now
from shared.logs import configure_logging
from shared.modeling import ModelLoadError
from shared.scanning import PolicyError, ScannerChain, ScannerFailed, build_output_chain, configure_scanner_runtime, load_policy
from shared.settings import get_settings
from shared.subjects import check_subject_token

if TYPE_CHECKING:
    from services.modelops.evaluated_model import EvaluatedModel

console = Console()

# About three lines of verse for the shipped model's tokenizer (20 lines of
# the corpus make 192 tokens), so a one-line reference is generated whole.
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_SEED = 0

# llm-guard logs every scan at debug; the table is the output.
LOG_LEVEL = "WARNING"


def eval_command(
    model: Annotated[str, typer.Argument(help="The base model: a folder that save_pretrained wrote, or a hub id in the local cache.")],
    dataset: Annotated[Path, typer.Option(help='Held-out JSONL file, one {"prompt", "completion"} object per line.')],
    adapter: Annotated[Path | None, typer.Option(help="A peft LoRA adapter folder to load over the base model.")] = None,
    model_version: Annotated[
        str | None, typer.Option(help="The name results are stored under. Default: the adapter's folder name, else the model's.")
    ] = None,
    max_examples: Annotated[int | None, typer.Option(min=1, help="Score only the first N examples.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated per example, greedily.")] = DEFAULT_MAX_NEW_TOKENS,
    seed: Annotated[int, typer.Option(help="torch's seed, set before the first example.")] = DEFAULT_SEED,
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Policy file whose output scanners run. Default: SLUICE_POLICY_FILE.")
    ] = None,
    tenant: Annotated[
        str, typer.Option(help="The tenant the event carries, whose policy overrides apply. Default: the development key's.")
    ] = DEV_TENANT,
    publish: Annotated[bool, typer.Option(help="Publish the results as a model.evaluated event for telemetry.")] = True,
    nats_url: NatsUrlOption = None,
) -> None:
    """Report perplexity, task accuracy, output flag rates, latency and tokens/s of a model version on a held-out set."""
    # Imported here: torch and transformers take seconds to import, which the other commands need not wait for.
    from services.modelops.evaluated_model import load_evaluated_model

    configure_scanner_runtime()
    configure_logging("cli", LOG_LEVEL, cache_loggers=False)
    try:
        check_subject_token(tenant, "tenant")
        heldout = load_heldout(dataset, max_examples)
        output_chain = _output_chain(policy_file, tenant)
        with console.status(f"loading {model}"):
            evaluated = load_evaluated_model(model, adapter)
        version = model_version or evaluated.adapter or evaluated.base
        result = _run(evaluated, heldout, output_chain, version, max_new_tokens, seed)
    except (HeldOutDataError, ModelLoadError, PolicyError, ScannerFailed, ValueError) as error:
        raise fail(str(error)) from error

    labels = f"base {evaluated.base}, adapter {evaluated.adapter or '-'}, quantization {evaluated.quantization or '-'}"
    console.print(f"model eval: {version} ({labels}) on {dataset} ({heldout.metric}), greedy, {max_new_tokens} new tokens, seed {seed}")
    console.print(results_table(result))
    if publish:
        run_id = f"model-eval-{uuid.uuid4()}"
        envelope = evaluation_envelope(result, run_id, tenant)
        asyncio.run(publish_envelopes(nats_url or get_settings().resolved_nats_url, [envelope], "pass --no-publish"))
        console.print(f"published model.evaluated as run {run_id} (tenant {tenant})")


def _output_chain(policy_file: Path | None, tenant: str) -> ScannerChain:
    """Build the policy's output chain for `tenant`, as moderation resolves it for a request without a route override."""
    policy = load_policy(policy_file or get_settings().policy_file)
    with console.status("building the output scanners"):
        return build_output_chain(policy.resolve(tenant, None))


def _run(
    evaluated: EvaluatedModel, heldout: HeldOutSet, chain: ScannerChain, version: str, max_new_tokens: int, seed: int
) -> ModelEvaluatedPayload:
    from services.modelops.evaluation import evaluate

    columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("evaluate", total=len(heldout.examples))
        return evaluate(
            evaluated,
            heldout,
            chain,
            model_version=version,
            max_new_tokens=max_new_tokens,
            seed=seed,
            on_example=lambda _result: progress.advance(task),
        )


def results_table(result: ModelEvaluatedPayload) -> Table:
    """Build the summary table of one run, one figure per row."""
    table = Table(title=f"{result.model_version} on {result.dataset}", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("examples", str(result.examples)),
        ("perplexity", f"{result.perplexity:.3f} ({result.completion_tokens} completion tokens)"),
        (f"accuracy ({result.metric})", f"{result.accuracy:.1%}"),
        ("blocked by output scanners", f"{result.blocked_rate:.1%}"),
        ("flagged only", f"{result.flagged_rate:.1%}"),
        *((f"  {name}", f"{rate:.1%}") for name, rate in result.scanner_rates.items()),
        ("latency p50 / p95", f"{result.latency.p50_ms:.1f} / {result.latency.p95_ms:.1f} ms"),
        ("tokens/s", f"{result.tokens_per_s:.1f} ({result.generated_tokens} tokens)"),
    ]
    for figure, value in rows:
        table.add_row(figure, value)
    return table


def evaluation_envelope(result: ModelEvaluatedPayload, run_id: str, tenant: str) -> Envelope:
    """Wrap the run's figures in a `model.evaluated` envelope whose request id is the run id."""
    return Envelope(
        event_id=derive_event_id(tenant, run_id, EventType.MODEL_EVALUATED),
        type=EventType.MODEL_EVALUATED,
        request_id=run_id,
        tenant=tenant,
        ts=utc_now(),
        payload=result.model_dump(mode="json"),
    )

