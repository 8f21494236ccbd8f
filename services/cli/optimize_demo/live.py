"""The demonstration's live steps: the stack with a second model server, the registry, simulated users and the report."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.cli.client import SluiceClient
from services.cli.experiment_report import arms_table, metrics_table, summary_lines, write_interval_chart
from services.cli.model_eval import evaluation_envelope
from services.cli.model_registry import registry_table
from services.cli.optimize_demo.run import (
    ADAPTER_DIR,
    ADAPTER_NAME,
    BASE_NAME,
    CONFIG_DIR,
    DATASET_DIR,
    EXPERIMENT_CHART,
    STACK_DIR,
    DemoRun,
)
from services.cli.optimize_demo.serving import (
    BASE_BACKEND,
    BASE_VARIANT,
    EXPERIMENT_KEY,
    TUNED_BACKEND,
    Arm,
    backends_config,
    experiments_config,
    start_model_server,
    wait_until_healthy,
    write_yaml,
)
from services.cli.optimize_demo.summary import command, markdown_table
from services.cli.optimize_demo.task import read_examples
from services.cli.optimize_demo.traffic import (
    UnitResult,
    feedback_bodies,
    plan_units,
    run_units,
    send_feedback,
    wait_for_experiment_rows,
    wait_for_requests,
)
from services.modelops.task_dataset import HELD_OUT_FILE
from shared.api_keys import DEV_TENANT
from shared.embedded.infrastructure import ManagedProcess
from shared.embedded.stack import EmbeddedStack
from shared.events import ModelEvaluatedPayload
from shared.experiment_analysis.report import ArmMetric, ExperimentReport
from shared.model_registry import EvalSummary, ModelKind, ModelRecord, list_models, new_record, open_model_registry, register_model
from shared.subjects import EVENTS_STREAM, event_subject

# The report's metrics that the summary lists: the two that the graded feedback drives, and two the models change.
SUMMARY_METRICS = ("conversion_rate", "thumbs_up_rate", "latency_ms", "output_tokens")


def run_live_steps(run: DemoRun) -> None:
    """Steps 5 and 6: start the stack and the second model server, register, send the users, fetch the report.

    Both are stopped before this returns or raises, also on Ctrl-C.
    """
    options = run.options
    run.console.rule("the stack, with the tuned model on a second model server")
    config_dir = options.path(CONFIG_DIR)
    stack = EmbeddedStack.on_free_ports(
        options.path(STACK_DIR), backends_file=config_dir / "backends.yaml", experiments_file=config_dir / "experiments.yaml"
    )
    tuned_server: ManagedProcess | None = None
    try:
        tuned_log = stack.log_dir / "tuned_model_server.log"
        tuned_server = start_model_server(options.path(run.served), stack.child_environment(), tuned_log)
        write_serving_files(run, config_dir, f"http://{stack.settings.host}:{tuned_server.port}")
        stack.start(progress=run.console.log)
        wait_until_healthy(tuned_server, stack.settings.host)
        run.console.print(f"stack at {stack.http_url}; {run.served} served on port {tuned_server.port}")
        asyncio.run(_register_and_send(run, stack))
    finally:
        if tuned_server is not None:
            tuned_server.stop()
        stack.stop()
        run.console.print("stopped the stack and the second model server")


def write_serving_files(run: DemoRun, config_dir: Path, tuned_url: str) -> None:
    """Write the backends and experiments files that the stack reads at start."""
    control = Arm(BASE_VARIANT, BASE_BACKEND, BASE_NAME, None)
    treatment = Arm(run.served, TUNED_BACKEND, run.served, run.quantized[run.served].method.value)
    write_yaml(config_dir / "backends.yaml", backends_config(tuned_url))
    write_yaml(config_dir / "experiments.yaml", experiments_config(control, treatment, run.max_new_tokens()))


async def _register_and_send(run: DemoRun, stack: EmbeddedStack) -> None:
    await register(run, stack.settings.resolved_nats_url)
    async with SluiceClient(stack.http_url, stack.api_key) as client:
        since = datetime.now(UTC).isoformat()
        await _send_units(run, client)
        await _send_feedback(run, client)
        report = ExperimentReport.model_validate(await client.experiment_report(EXPERIMENT_KEY, {"since": since}))
    run.report = report
    _print_report(run, report)


async def register(run: DemoRun, nats_url: str) -> None:
    """Publish each evaluation as a `model.evaluated` event, and register base, adapter and quantized models with lineage."""
    connection = await nats.connect(nats_url)
    try:
        summaries = {name: await _publish_evaluation(connection, result) for name, result in run.evaluations.items()}
        kv = await open_model_registry(connection.jetstream())
        for record in registry_records(run, summaries):
            await register_model(kv, record, replace=True)
        run.console.print(registry_table(await list_models(kv)))
    finally:
        await connection.close()
    _add_registry_section(run)


def registry_records(run: DemoRun, summaries: dict[str, EvalSummary]) -> list[ModelRecord]:
    """Return the base, adapter and quantized records, base first, since the others name it."""
    options = run.options
    data_hash = run.corpus_sha256()
    records = [
        new_record(BASE_NAME, options.base, kind=ModelKind.MODEL, eval_summary=summaries[BASE_NAME]),
        new_record(
            ADAPTER_NAME, options.path(ADAPTER_DIR), kind=ModelKind.ADAPTER, base=BASE_NAME,
            dataset_sha256=data_hash, eval_summary=summaries[ADAPTER_NAME],
        ),
    ]
    for name, result in run.quantized.items():
        records.append(
            new_record(
                name, result.out_dir, kind=ModelKind.MODEL, base=BASE_NAME, quantization=result.method.value,
                dataset_sha256=data_hash, eval_summary=summaries[name],
            )
        )
    return records


async def _publish_evaluation(connection: nats.NATS, result: ModelEvaluatedPayload) -> EvalSummary:
    """Publish one evaluation for telemetry's `model_evals` table, and return the figures that a registry record keeps."""
    run_id = f"model-eval-{uuid.uuid4()}"
    envelope = evaluation_envelope(result, run_id, DEV_TENANT)
    await connection.jetstream().publish(
        event_subject(envelope.type),
        envelope.model_dump_json().encode(),
        stream=EVENTS_STREAM,
        headers={"Nats-Msg-Id": envelope.event_id},
    )
    return EvalSummary(
        evaluation_id=run_id,
        evaluated_at=envelope.ts,
        dataset=result.dataset,
        dataset_sha256=result.dataset_sha256,
        examples=result.examples,
        metric=result.metric,
        accuracy=result.accuracy,
        perplexity=result.perplexity,
        blocked_rate=result.blocked_rate,
        flagged_rate=result.flagged_rate,
        latency_p50_ms=result.latency.p50_ms,
        latency_p95_ms=result.latency.p95_ms,
        tokens_per_s=result.tokens_per_s,
    )


def _add_registry_section(run: DemoRun) -> None:
    options = run.options
    data_hash = run.corpus_sha256()
    rows = [[BASE_NAME, "model", "-", "-", options.base], [ADAPTER_NAME, "adapter", BASE_NAME, "-", options.path(ADAPTER_DIR)]]
    rows += [[name, "model", BASE_NAME, result.method.value, result.out_dir] for name, result in run.quantized.items()]
    lines = markdown_table(("name", "kind", "base", "quantization", "folder"), rows)
    lines += ["", f"The adapter and quantized records carry the corpus SHA-256 `{data_hash[:12]}` as their data hash."]
    lines += ["Every record carries its evaluation's figures, published to telemetry's `model_evals` table."]
    lineage = ["--base", BASE_NAME, "--dataset-hash", data_hash, "--eval-run", "latest"]
    commands = [command("sluice", "model", "register", BASE_NAME, "--path", options.base)]
    commands.append(command("sluice", "model", "register", ADAPTER_NAME, "--path", options.path(ADAPTER_DIR), "--adapter", *lineage))
    commands += [
        command("sluice", "model", "register", name, "--path", result.out_dir, "--quantization", result.method.value, *lineage)
        for name, result in run.quantized.items()
    ]
    run.summary.add("5. Registry", lines, commands)


async def _send_units(run: DemoRun, client: SluiceClient) -> None:
    rng = random.Random(run.options.seed)
    examples = read_examples(run.options.path(DATASET_DIR) / HELD_OUT_FILE)
    run.units = plan_units(examples, run.options.units, rng, f"demo-{run.options.seed}-user")
    columns = (TextColumn("simulated users"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=run.console) as progress:
        task = progress.add_task("users", total=len(run.units))
        await run_units(client, run.units, run.evaluations[BASE_NAME].metric, lambda _unit: progress.advance(task))


async def _send_feedback(run: DemoRun, client: SluiceClient) -> None:
    """Wait until the store has every request, send the graded feedback, then wait until the store has all of it."""
    request_ids = [unit.request_id for unit in run.units]
    await wait_for_requests(client, request_ids)
    bodies = feedback_bodies(run.units, random.Random(run.options.seed))
    await send_feedback(client, bodies)
    assigned = sum(unit.variant is not None for unit in run.units)
    await wait_for_experiment_rows(client, EXPERIMENT_KEY, request_ids, assigned, len(bodies))
    run.console.print(f"sent {len(bodies)} pieces of feedback on {len(request_ids)} requests")


def graded_counts(units: list[UnitResult]) -> dict[str, tuple[int, int]]:
    """Return (correct, total) units per variant.

    A unit that no variant served counts under its status and scanner, such as `(blocked by InjectionClassifier)`.
    """
    counts: dict[str, tuple[int, int]] = {}
    for unit in units:
        key = unit.variant or _unserved_label(unit)
        correct, total = counts.get(key, (0, 0))
        counts[key] = (correct + unit.correct, total + 1)
    return dict(sorted(counts.items()))


def _unserved_label(unit: UnitResult) -> str:
    if unit.blocked_by is None:
        return f"({unit.status})"
    return f"({unit.status} by {unit.blocked_by})"


def _print_report(run: DemoRun, report: ExperimentReport) -> None:
    run.console.rule(f"experiment {EXPERIMENT_KEY}")
    for arm, (correct, total) in graded_counts(run.units).items():
        run.console.print(f"{arm}: {correct} of {total} answers graded correct ({correct / total:.1%})", markup=False)
    run.console.print(arms_table(report))
    run.console.print(metrics_table(report))
    for line in summary_lines(report):
        run.console.print(line, markup=False)
    write_interval_chart(report, run.options.path(EXPERIMENT_CHART))
    run.console.print(f"wrote {run.options.path(EXPERIMENT_CHART)}")
    _add_experiment_section(run, report)


def _add_experiment_section(run: DemoRun, report: ExperimentReport) -> None:
    graded = [[arm, total, f"{correct} ({correct / total:.1%})"] for arm, (correct, total) in graded_counts(run.units).items()]
    lines = markdown_table(("arm", "units", "answers graded correct"), graded)
    rows = []
    for metric in report.metrics:
        if metric.key in SUMMARY_METRICS:
            rows += [_metric_row(metric.key, arm) for arm in metric.arms]
    lines += ["", *markdown_table(("metric", "arm", "units", "estimate [95% interval]", "p", "outcome"), rows), ""]
    lines += [f"- {line}" for line in summary_lines(report)]
    lines += ["", f"The interval chart of every metric is `{run.options.path(EXPERIMENT_CHART)}`."]
    commands = [f"{run.options.command()}  # steps 5 and 6 run only inside the demonstration"]
    run.summary.add(f"6. A/B experiment `{EXPERIMENT_KEY}` through the stack", lines, commands)


def _metric_row(key: str, arm: ArmMetric) -> list[object]:
    estimate = arm.estimate
    interval = "-" if estimate is None else f"{estimate.value:.4g} [{estimate.ci_low:.4g}, {estimate.ci_high:.4g}]"
    p_value = "-" if arm.p_value is None else f"{arm.p_value:.3g}"
    return [key, arm.variant, arm.units, interval, p_value, arm.outcome]
