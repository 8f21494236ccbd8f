"""`sluice safety eval`: score every configured input scanner on the labelled prompt files and publish the figures.

The scanners come from the policy file, built as the safety service builds
them. When the prompt classifier's held-out split file exists, only the
held-out prompts are scanned, so the classifier is never scored on its own
training data. `--publish` sends each row as a `safety.evaluated` event to
the EVENTS stream, where telemetry stores it in ClickHouse.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli.evaluation import evaluate as evaluate_policy
from services.cli.evaluation import select_prompts
from services.cli.event_publishing import publish_envelopes
from services.cli.nats_buckets import NatsUrlOption, fail
from shared.events import Envelope, EventType, SafetyEvaluatedPayload, derive_event_id, utc_now
from shared.logs import configure_logging
from shared.scanning import PolicyError, ScannerFailed, configure_scanner_runtime, load_policy
from shared.settings import REPO_ROOT, get_settings
from shared.subjects import check_subject_token

safety_app = typer.Typer(help="Measure how well the screening policy catches attacks.", no_args_is_help=True)
console = Console()

# The labelled prompt files live next to the repository, not in it.
DEFAULT_PROMPTS_DIR = REPO_ROOT.parent / "shared" / "data" / "prompts"
# The tenant that evaluation events are stored under, apart from any traffic.
DEFAULT_TENANT = "safety-eval"
LOG_LEVEL = "WARNING"
HEADERS = ["dataset", "scanner", "pos", "neg", "detection", "FPR", "precision", "F1", "p50 ms", "p99 ms"]


def split_file() -> Path | None:
    """Return the prompt classifier's held-out split file, or None while no classifier module exists."""
    try:
        from shared.scanning.classifier import DEFAULT_MODEL_DIR, SPLIT_FILE
    except ImportError:
        return None
    return DEFAULT_MODEL_DIR / SPLIT_FILE


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def results_table(rows: list[SafetyEvaluatedPayload], scanner_set: str) -> Table:
    """Build the table of one scanner set's rows, one line per dataset and scanner."""
    table = Table(title=f"{scanner_set} ({rows[0].split} prompts)", show_header=True)
    for header in HEADERS:
        table.add_column(header, justify="left" if header in ("dataset", "scanner") else "right")
    for row in rows:
        rates = [_rate(row.detection_rate), _rate(row.false_positive_rate), _rate(row.precision), _rate(row.f1)]
        latency = [f"{row.latency.p50_ms:.2f}", f"{row.latency.p99_ms:.2f}"]
        table.add_row(row.dataset, row.scanner, str(row.positives), str(row.negatives), *rates, *latency)
    return table


def evaluation_envelopes(rows: list[SafetyEvaluatedPayload], run_id: str, tenant: str) -> list[Envelope]:
    """Wrap each row in a `safety.evaluated` envelope; the run id is the request id and the row index the seq."""
    return [
        Envelope(
            event_id=derive_event_id(tenant, run_id, EventType.SAFETY_EVALUATED, seq=index),
            type=EventType.SAFETY_EVALUATED,
            request_id=run_id,
            tenant=tenant,
            ts=utc_now(),
            payload=row.model_dump(mode="json"),
        )
        for index, row in enumerate(rows)
    ]


@safety_app.command("eval")
def evaluate(
    policy_file: Annotated[
        Path | None, typer.Option("--policy", help="Policy file. Default: SLUICE_POLICY_FILE, else the shipped policy.")
    ] = None,
    data: Annotated[Path, typer.Option(help="Folder of labelled *.jsonl prompt files.")] = DEFAULT_PROMPTS_DIR,
    all_prompts: Annotated[
        bool, typer.Option(help="Scan every prompt, even when the prompt classifier's held-out split file exists.")
    ] = False,
    publish: Annotated[bool, typer.Option(help="Publish each row as a safety.evaluated event for telemetry.")] = False,
    tenant: Annotated[str, typer.Option(help="The tenant that published events carry.")] = DEFAULT_TENANT,
    nats_url: NatsUrlOption = None,
) -> None:
    """Run every input scanner of the policy over the prompt files and print detection, false positives and latency."""
    configure_scanner_runtime()
    # llm-guard logs every scan at debug; the table is the output.
    configure_logging("cli", LOG_LEVEL, cache_loggers=False)
    path = policy_file or get_settings().policy_file
    try:
        check_subject_token(tenant, "tenant")
        heldout_file = None if all_prompts else split_file()
        prompts, split = select_prompts(data, heldout_file)
        if not prompts:
            raise fail(f"no prompt in {data} is in the held-out split {heldout_file}; pass --all-prompts to scan them all")
        rows = evaluate_policy(load_policy(path), prompts, split)
    except (PolicyError, ScannerFailed, ValueError, FileNotFoundError) as error:
        raise fail(str(error)) from error

    console.print(f"safety eval: {len(prompts)} prompts ({split}) from {data}, policy {path}")
    for scanner_set in dict.fromkeys(row.scanner_set for row in rows):
        console.print(results_table([row for row in rows if row.scanner_set == scanner_set], scanner_set))
    if publish:
        run_id = f"eval-{uuid.uuid4()}"
        envelopes = evaluation_envelopes(rows, run_id, tenant)
        asyncio.run(publish_envelopes(nats_url or get_settings().resolved_nats_url, envelopes, "leave out --publish"))
        console.print(f"published {len(envelopes)} safety.evaluated events as run {run_id} (tenant {tenant})")
