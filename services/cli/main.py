"""The `sluice` command: start the embedded stack and talk to a running one."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from services.cli.client import ClientError, SluiceClient
from services.cli.config import config_app
from services.cli.demo import PromptFileError, load_prompts, replay, summarize
from services.cli.drift_report import CHART_SUFFIXES, drift_table, write_chart
from services.cli.experiment_report import arms_table, metrics_table, summary_lines, write_interval_chart
from services.cli.feedback import MetadataError, new_idempotency_key, parse_metadata, send_feedback
from services.cli.keys import keys_app
from services.cli.model import model_app
from services.cli.report_charts import check_chart_path, write_series_chart
from services.cli.report_tables import REPORT_CHARTS, REPORT_MODELS, REPORT_TABLES
from services.cli.safety_eval import safety_app
from services.cli.tables import summary_table
from services.cli.tco import tco
from shared.drift_reports import DriftPoint, DriftState
from shared.embedded.stack import SUPERVISE_INTERVAL_S, EmbeddedStack, StackError
from shared.events import FeedbackKind
from shared.experiment_analysis.report import ExperimentReport
from shared.settings import get_settings
from shared.summary import TrafficSummary

app = typer.Typer(help="Sluice: an LLM serving pipeline. `sluice up` starts it; the other commands use it.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(safety_app, name="safety")
app.add_typer(model_app, name="model")
app.command("tco")(tco)
console = Console()
errors = Console(stderr=True)

# The embedded model writes about 500 tokens per second; 64 tokens keep a demo quick.
DEFAULT_MAX_NEW_TOKENS = 64
# Two cores run the whole stack; more requests in flight only queue.
DEFAULT_DEMO_CONCURRENCY = 4

UrlOption = Annotated[
    str | None,
    typer.Option("--url", envvar="SLUICE_URL", help="Ingress base URL. Default: http://SLUICE_HOST:SLUICE_HTTP_PORT."),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="SLUICE_API_KEY",
        help="API key. Default: the development key that `sluice up` wrote to its data folder.",
        show_default=False,
    ),
]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


def _base_url(url: str | None) -> str:
    settings = get_settings()
    return (url or f"http://{settings.host}:{settings.http_port}").rstrip("/")


def _api_key(api_key: str | None) -> str:
    if api_key:
        return api_key
    key_file = get_settings().dev_api_key_file
    if key_file.is_file():
        return key_file.read_text().strip()
    raise _fail(f"no API key: set SLUICE_API_KEY or run `sluice up`, which writes the development key to {key_file}")


def _client(url: str | None, api_key: str | None) -> SluiceClient:
    return SluiceClient(_base_url(url), _api_key(api_key))


@app.command()
def up() -> None:
    """Start the embedded stack in the foreground; Ctrl-C stops every process it started."""
    settings = get_settings()
    stack = EmbeddedStack(settings)
    # `kill` stops the stack as cleanly as Ctrl-C does. A shell starts
    # background jobs with SIGINT ignored; restore it so Ctrl-C and
    # `kill -INT` always reach the supervisor.
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with console.status("starting the stack") as status:
            stack.start(progress=lambda step: status.update(step))
        _print_started(stack)
        _supervise(stack)
    except StackError as error:
        raise _fail(f"{error}; this `sluice up` has stopped") from error
    except KeyboardInterrupt:
        console.print("stopping the stack")
    finally:
        stack.stop()
    console.print("stopped")


def _print_started(stack: EmbeddedStack) -> None:
    console.print(f"Sluice is running at [bold]{stack.http_url}[/bold]")
    console.print(f"API key (tenant dev): {stack.api_key}  (also in {stack.settings.dev_api_key_file})")
    console.print(f"Logs: {stack.log_dir}")
    console.print('Try: sluice submit "Write a sonnet about the sea"')
    console.print("Press Ctrl-C to stop.")


def _supervise(stack: EmbeddedStack) -> None:
    """Return never: raise `StackError` when a child exits, `KeyboardInterrupt` on Ctrl-C or SIGTERM."""
    while True:
        stack.raise_if_exited()
        time.sleep(SUPERVISE_INTERVAL_S)


def _interrupt_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@app.command()
def submit(
    prompt: Annotated[str, typer.Argument(help="The prompt, sent as one user message.")],
    max_new_tokens: Annotated[int, typer.Option(help="Maximum number of tokens to generate.")] = DEFAULT_MAX_NEW_TOKENS,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature; default: the variant's.")] = None,
    user_id: Annotated[str | None, typer.Option(help="User id; the same id always gets the same experiment variant.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Submit a prompt, print the tokens as they stream, then the final status."""
    params: dict[str, object] = {"max_new_tokens": max_new_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    body = {"prompt": prompt, "params": params, **({"user_id": user_id} if user_id else {})}
    asyncio.run(_submit(_client(url, api_key), body))


async def _submit(client: SluiceClient, body: dict) -> None:
    async with client:
        try:
            submission = await client.submit(body)
            console.print(f"[dim]request {submission.request_id}[/dim]")
            final: dict = {}
            async for message in client.stream(submission.stream_url):
                if message["type"] == "chunk":
                    sys.stdout.write(message["text"])
                    sys.stdout.flush()
                else:
                    final = message
            status = await client.status(submission.request_id)
        except ClientError as error:
            raise _fail(str(error)) from error
    console.print()
    _print_final(final, status)


def _print_final(final: dict, status: dict) -> None:
    """Print one line with the outcome, its reason and the timings; exit 1 when the request failed or expired."""
    outcome = final.get("status", status.get("status"))
    variant = (status.get("variant") or {}).get("variant_key", "-")
    parts = [f"status: {outcome}", f"variant: {variant}"]
    if final.get("blocked_by"):
        parts.append(f"blocked by: {final['blocked_by']} ({final.get('reason') or 'no reason given'})")
    if final.get("error_code"):
        parts.append(f"error: {final['error_code']} ({final.get('message') or 'no message'})")
    if final.get("finish_reason"):
        parts.append(f"finish: {final['finish_reason']}")
    timings = status.get("timings") or {}
    if timings.get("ttft_ms") is not None:
        parts.append(f"TTFT: {timings['ttft_ms']:.0f} ms")
    if timings.get("total_ms") is not None:
        parts.append(f"total: {timings['total_ms']:.0f} ms")
    console.print("  ".join(parts), soft_wrap=True)
    if outcome in ("failed", "expired"):
        raise typer.Exit(code=1)


@app.command()
def demo(
    prompts: Annotated[Path, typer.Option(help="JSONL file with a `text` field per line.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many prompts.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = DEFAULT_DEMO_CONCURRENCY,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Maximum number of tokens to generate per prompt.")] = DEFAULT_MAX_NEW_TOKENS,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Replay prompts from a JSONL file and print outcomes and client-side latency."""
    try:
        texts = load_prompts(prompts, limit)
    except PromptFileError as error:
        raise _fail(str(error)) from error
    summary = asyncio.run(_demo(_client(url, api_key), texts, concurrency, max_new_tokens))
    console.print(f"demo: {len(texts)} prompts from {prompts}; latency measured by this client from each POST")
    console.print(summary_table(summary, "demo summary"))


async def _demo(client: SluiceClient, texts: list[str], concurrency: int, max_new_tokens: int) -> TrafficSummary:
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    async with client:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replay", total=len(texts))
            try:
                outcomes = await replay(
                    client,
                    texts,
                    concurrency=concurrency,
                    max_new_tokens=max_new_tokens,
                    on_done=lambda _outcome: progress.advance(task),
                )
            except ClientError as error:
                raise _fail(str(error)) from error
    return summarize(outcomes)


@app.command()
def report(
    name: Annotated[
        str,
        typer.Argument(help="Report name: summary, drift, experiment, latency, throughput, cost, safety, errors or feedback."),
    ] = "summary",
    experiment_key: Annotated[
        str | None, typer.Argument(help="experiment only: the experiment's key, e.g. sampling-temperature.", show_default=False)
    ] = None,
    since: Annotated[str | None, typer.Option(help="Start of the time range, ISO 8601 (UTC if no offset).")] = None,
    until: Annotated[str | None, typer.Option(help="End of the time range, ISO 8601.")] = None,
    variant: Annotated[
        str | None, typer.Option(help="latency, throughput, cost, safety, errors, feedback: only this model variant.")
    ] = None,
    bucket: Annotated[
        str | None,
        typer.Option(help="latency, throughput, cost, safety, errors, feedback: time bucket, 1m, 5m, 15m, 1h or 1d. Default: 1h."),
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option(
            help="latency, throughput, cost, safety, errors, feedback: also write the report's time series to this .html "
            "or .svg file. experiment: write each metric's interval per arm."
        ),
    ] = None,
    plot: Annotated[
        str | None, typer.Option(help="drift only: chart this signal's alarm statistic over time, e.g. output_chars.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="drift only: the chart file to write with --plot, ending in .svg or .html.")] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Print a report of your tenant's traffic, read from ClickHouse: the summary, drift, an experiment, or a canned report per time bucket."""
    if experiment_key is not None and name != "experiment":
        raise _fail(f"the {name} report takes no second argument; only `sluice report experiment KEY` does")
    if name == "experiment":
        if variant is not None or bucket is not None:
            raise _fail("--variant and --bucket do not apply to the experiment report, which compares every arm")
        _experiment_report(_client(url, api_key), experiment_key, {"since": since, "until": until}, chart)
        return
    if name in REPORT_TABLES:
        filters = {"since": since, "until": until, "variant": variant, "bucket": bucket}
        _analytics_report(_client(url, api_key), name, filters, chart)
        return
    if variant is not None or bucket is not None or chart is not None:
        raise _fail(f"--variant, --bucket and --chart apply to {', '.join(REPORT_TABLES)}, not to the {name} report")
    if name == "drift":
        if since is not None or until is not None:
            raise _fail("--since and --until apply to the summary report only. The drift report shows the latest state")
        _drift_report(_client(url, api_key), plot, out)
        return
    if name != "summary":
        raise _fail(f"unknown report {name!r}; available reports: summary, drift, experiment, {', '.join(REPORT_TABLES)}")
    summary = asyncio.run(_report(_client(url, api_key), since, until))
    console.print("report: summary of all traffic, from ClickHouse; TTFT runs from acceptance to the first generated token")
    console.print(summary_table(summary, "report summary"))


def _experiment_report(client: SluiceClient, key: str | None, filters: dict[str, str | None], chart: Path | None) -> None:
    if key is None:
        raise _fail("missing experiment key: run `sluice report experiment KEY`, with a key from experiments.yaml")
    if chart is not None:
        try:
            check_chart_path(chart)
        except ValueError as error:
            raise _fail(f"invalid --chart: {error}") from error
    body = asyncio.run(_fetch(client, lambda: client.experiment_report(key, filters)))
    report = ExperimentReport.model_validate(body)
    console.print(arms_table(report))
    console.print(metrics_table(report))
    for line in summary_lines(report):
        console.print(line, markup=False)
    if chart is None:
        return
    try:
        intervals = write_interval_chart(report, chart)
    except ValueError as error:
        raise _fail(str(error)) from error
    console.print(f"wrote {chart}: {intervals} intervals")


def _analytics_report(client: SluiceClient, name: str, filters: dict[str, str | None], chart: Path | None) -> None:
    if chart is not None:
        try:
            check_chart_path(chart)
        except ValueError as error:
            raise _fail(f"invalid --chart: {error}") from error
    body = asyncio.run(_fetch(client, lambda: client.analytics_report(name, filters)))
    report = REPORT_MODELS[name].model_validate(body)
    console.print(REPORT_TABLES[name](report))
    if chart is None:
        return
    measure, chart_points = REPORT_CHARTS[name]
    points = chart_points(report)
    try:
        write_series_chart(f"{name}: {measure}, per {body['bucket']}", points, chart)
    except ValueError as error:
        raise _fail(str(error)) from error
    console.print(f"wrote {chart}: {measure}, {len(points)} points")


async def _report(client: SluiceClient, since: str | None, until: str | None) -> TrafficSummary:
    async with client:
        try:
            return TrafficSummary.model_validate(await client.summary(since, until))
        except ClientError as error:
            raise _fail(str(error)) from error


def _drift_report(client: SluiceClient, signal: str | None, out: Path | None) -> None:
    if signal is None and out is None:
        body = asyncio.run(_fetch(client, lambda: client.drift_states()))
        states = [DriftState.model_validate(state) for state in body["states"]]
        console.print(drift_table(states))
        if not states:
            console.print("no drift results yet. The drift service writes them once a window contains enough samples")
        return
    if signal is None or out is None:
        raise _fail("--plot SIGNAL and --out FILE go together, e.g. --plot output_chars --out drift.svg")
    if out.suffix not in CHART_SUFFIXES:
        raise _fail(f"invalid --out {out}: the chart is written as SVG, so use a file name ending in .svg or .html")
    body = asyncio.run(_fetch(client, lambda: client.drift_history(signal)))
    points = [DriftPoint.model_validate(point) for point in body["points"]]
    try:
        write_chart(signal, points, out)
    except ValueError as error:
        raise _fail(str(error)) from error
    console.print(f"wrote {out}: {len(points)} points of {signal}")


async def _fetch(client: SluiceClient, request: Callable[[], Awaitable[dict]]) -> dict:
    async with client:
        try:
            return await request()
        except ClientError as error:
            raise _fail(str(error)) from error


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT over events, request_signals, their rollups, drift_reports, exposures or feedback; it reads only your tenant's rows, or every tenant's with an admin key.")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="A value for the placeholder {NAME:Type} in the SQL, as NAME=VALUE; repeatable."),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Run read-only SQL over your tenant's stored events and signals and print the result as a table."""
    parameters = _query_parameters(param or [])
    result = asyncio.run(_query(_client(url, api_key), sql, parameters))
    console.print(_result_table(result["columns"], result["rows"]))
    row_count = len(result["rows"])
    console.print(f"{row_count} row" if row_count == 1 else f"{row_count} rows")


def _query_parameters(pairs: list[str]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise _fail(f"invalid --param {pair!r}: write NAME=VALUE, e.g. --param type=request.accepted")
        parameters[name] = value
    return parameters


async def _query(client: SluiceClient, sql: str, parameters: dict[str, str]) -> dict:
    async with client:
        try:
            return await client.query(sql, parameters)
        except ClientError as error:
            raise _fail(str(error)) from error


def _result_table(columns: list[str], rows: list[list]) -> Table:
    # Text cells, so that brackets in stored values print as they are, not as Rich markup.
    table = Table(show_header=True)
    for column in columns:
        table.add_column(Text(column))
    for row in rows:
        table.add_row(*(Text(_cell(value)) for value in row))
    return table


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@app.command()
def status(
    request_id: Annotated[str, typer.Argument(help="The request id that submission returned.")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Print a request's status record as JSON."""

    async def fetch() -> dict:
        async with _client(url, api_key) as client:
            try:
                return await client.status(request_id)
            except ClientError as error:
                raise _fail(str(error)) from error

    console.print_json(data=asyncio.run(fetch()))


@app.command()
def cancel(
    request_id: Annotated[str, typer.Argument(help="The request id that submission returned.")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a request that has not ended: generation stops within one token and its status turns `cancelled`."""

    async def send() -> dict:
        async with _client(url, api_key) as client:
            try:
                return await client.cancel(request_id)
            except ClientError as error:
                raise _fail(str(error)) from error

    console.print_json(data=asyncio.run(send()))


@app.command()
def feedback(
    request_id: Annotated[str, typer.Argument(help="The request id that submission returned.")],
    kind: Annotated[FeedbackKind, typer.Option(help="What the value measures.")],
    value: Annotated[
        float, typer.Option(help="rating: 1 to 5; thumbs: 1 up, 0 down; conversion: 1 or 0; value: any number.")
    ],
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="A tag as KEY=VALUE; repeatable, at most 32.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Sending the same key again records the feedback once. Default: a new UUID, printed."),
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Send feedback on a request of your tenant and print its feedback id."""
    try:
        tags = parse_metadata(metadata or [])
    except MetadataError as error:
        raise _fail(str(error)) from error
    key = idempotency_key or new_idempotency_key()
    try:
        result = asyncio.run(send_feedback(_client(url, api_key), request_id, kind.value, value, tags, key))
    except ClientError as error:
        raise _fail(f"{error} (idempotency key {key})") from error
    console.print_json(data={**result, "idempotency_key": key})
