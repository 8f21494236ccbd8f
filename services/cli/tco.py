"""`sluice tco`: the monthly cost of serving each scenario, the ratio between them, and a bar chart.

The scenarios come from `shared/config/tco.yaml` or `--file`. Scenario
options (`--parameters`, `--throughput-tokens-per-s` and the rest) add one
more scenario, built from the file's `common` fields or from the scenario
that `--from-scenario` names, with the options replacing those fields.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table

from services.cli.report_charts import check_chart_path
from services.modelops.tco import HOURS_PER_MONTH, GpuSpec, Scenario, ScenarioCost, TcoInputError, cost_ratios, cost_scenario
from services.modelops.tco_file import DEFAULT_TCO_FILE, TcoInputs, build_scenario, load_tco_file

console = Console()
errors = Console(stderr=True)

# The name of the scenario that options build when --name is not given.
DEFAULT_OPTION_SCENARIO = "command-line"
_TRAFFIC_OPTIONS = ("tokens_per_month", "requests_per_day", "tokens_per_request", "peak_to_average")
_SCENARIO_OPTIONS = (
    "parameters",
    "bits_per_weight",
    "memory_overhead_factor",
    "attention_heads",
    "gpu",
    "throughput_tokens_per_s",
    "throughput_source",
    *_TRAFFIC_OPTIONS,
    "utilisation",
    "energy_usd_per_kwh",
    "pue",
    "engineering_hours_per_month",
    "engineering_usd_per_hour",
)

# Chart geometry in SVG user units (pixels at 100% zoom).
_WIDTH = 720
_BAR_HEIGHT = 28
_BAR_GAP = 14
_MARGIN_LEFT = 170
_MARGIN_RIGHT = 110
_MARGIN_TOP = 50
_MARGIN_BOTTOM = 40
# Matplotlib's "tab10" colours, one per cost component.
_COMPONENT_COLOURS = {"GPU": "#1f77b4", "energy (billed)": "#ff7f0e", "engineering": "#2ca02c"}


def tco(
    file: Annotated[
        Path | None, typer.Option("--file", help="Scenario YAML file. Default: the built-in shared/config/tco.yaml.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Name of the scenario that the options below build.")] = None,
    from_scenario: Annotated[
        str | None, typer.Option(help="Start the options' scenario from this file scenario, not from `common`.")
    ] = None,
    parameters: Annotated[float | None, typer.Option(help="Model parameter count, e.g. 13e9.")] = None,
    bits_per_weight: Annotated[float | None, typer.Option(help="Bits per weight, e.g. 16 or 4.")] = None,
    memory_overhead_factor: Annotated[
        float | None, typer.Option(help="GPU memory needed over the weights' bytes (KV cache, activations), >= 1.")
    ] = None,
    attention_heads: Annotated[
        int | None, typer.Option(help="Attention heads. GPUs per replica round up to a divisor of them.")
    ] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU type from the catalogue, e.g. a100-80gb.")] = None,
    throughput_tokens_per_s: Annotated[
        float | None, typer.Option(help="Measured or assumed generated tokens/s per GPU.")
    ] = None,
    throughput_source: Annotated[
        str | None, typer.Option(help="Where the throughput comes from. Default with --throughput-tokens-per-s: 'command line'.")
    ] = None,
    tokens_per_month: Annotated[float | None, typer.Option(help="Generated tokens per month.")] = None,
    requests_per_day: Annotated[float | None, typer.Option(help="Requests per day, with --tokens-per-request.")] = None,
    tokens_per_request: Annotated[float | None, typer.Option(help="Generated tokens per request.")] = None,
    peak_to_average: Annotated[float | None, typer.Option(help="Peak tokens/s over the monthly average, >= 1.")] = None,
    utilisation: Annotated[
        float | None, typer.Option(help="Share of the fleet's throughput the peak may use, in (0, 1].")
    ] = None,
    energy_usd_per_kwh: Annotated[float | None, typer.Option(help="Energy price in USD per kWh.")] = None,
    pue: Annotated[float | None, typer.Option(help="Data-centre power usage effectiveness, >= 1.")] = None,
    engineering_hours_per_month: Annotated[float | None, typer.Option(help="Engineering hours per month.")] = None,
    engineering_usd_per_hour: Annotated[float | None, typer.Option(help="Engineering cost in USD per hour.")] = None,
    chart: Annotated[
        Path | None, typer.Option(help="Also write a bar chart of the monthly cost per scenario to this .svg or .html file.")
    ] = None,
) -> None:
    """Print the GPUs needed and the monthly cost of each scenario, and how many times the cheapest each costs."""
    # The parameters above are named after the Scenario fields they set.
    options = {key: value for key, value in locals().items() if key in _SCENARIO_OPTIONS and value is not None}
    if chart is not None:
        try:
            check_chart_path(chart)
        except ValueError as error:
            raise _fail(f"invalid --chart: {error}") from error
    try:
        inputs = _load(file)
        scenarios = _scenarios(inputs, name, from_scenario, options)
        costs = [cost_scenario(scenario, inputs.gpus[scenario.gpu]) for scenario in scenarios]
    except TcoInputError as error:
        raise _fail(str(error)) from error

    for scenario, cost in zip(scenarios, costs):
        console.print(scenario_table(scenario, inputs.gpus[scenario.gpu], cost))
    ratios = cost_ratios(costs)
    console.print(comparison_table(costs, ratios))
    console.print(ratio_line(costs, ratios), markup=False)
    if chart is not None:
        write_cost_chart(costs, chart)
        console.print(f"wrote {chart}: monthly cost of {len(costs)} scenarios")


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape_markup(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _load(file: Path | None) -> TcoInputs:
    """Read the built-in file, and `file` with the built-in GPU catalogue as its base."""
    builtin = load_tco_file(DEFAULT_TCO_FILE)
    if file is None:
        return builtin
    return load_tco_file(file, base_gpus=builtin.gpus)


def _scenarios(inputs: TcoInputs, name: str | None, from_scenario: str | None, options: dict[str, Any]) -> list[Scenario]:
    """Return the file's scenarios, and the options' one when any option builds it."""
    scenarios = list(inputs.scenarios)
    if options or name is not None or from_scenario is not None:
        scenarios.append(option_scenario(inputs, name, from_scenario, options))
    return scenarios


def option_scenario(
    inputs: TcoInputs, name: str | None, from_scenario: str | None, options: dict[str, Any]
) -> Scenario:
    """Build the scenario of the command-line options, or raise `TcoInputError` naming the missing or invalid field."""
    if from_scenario is not None and from_scenario not in inputs.scenario_fields:
        known = ", ".join(inputs.scenario_fields)
        raise TcoInputError(f"--from-scenario: unknown scenario {from_scenario!r}; the file has: {known}")
    base = inputs.scenario_fields[from_scenario] if from_scenario is not None else inputs.common
    scenario_name = name or (f"{from_scenario}-{DEFAULT_OPTION_SCENARIO}" if from_scenario else DEFAULT_OPTION_SCENARIO)
    if scenario_name in inputs.scenario_fields:
        raise TcoInputError(f"--name: the file already has a scenario named {scenario_name!r}; choose another name")

    fields = {**base, **{key: value for key, value in options.items() if key not in _TRAFFIC_OPTIONS}}
    fields["name"] = scenario_name
    fields["traffic"] = _option_traffic(base.get("traffic") or {}, options)
    if "throughput_tokens_per_s" in options and "throughput_source" not in options:
        fields["throughput_source"] = "command line"
    missing = [field for field, info in Scenario.model_fields.items() if info.is_required() and field not in fields]
    if missing:
        raise TcoInputError(
            f"command-line scenario ({scenario_name}): missing {', '.join(missing)}. Set each with the option "
            "of its name with dashes, e.g. --bits-per-weight, or start from a file scenario with --from-scenario NAME"
        )
    return build_scenario(fields, "command-line scenario", inputs.gpus)


def _option_traffic(base: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Return the base traffic with the options' volume and peak-to-average ratio in place of its own."""
    traffic = dict(base)
    traffic_options = {key: options[key] for key in _TRAFFIC_OPTIONS if key in options}
    if "tokens_per_month" in traffic_options:
        traffic.pop("requests_per_day", None)
        traffic.pop("tokens_per_request", None)
    if "requests_per_day" in traffic_options or "tokens_per_request" in traffic_options:
        traffic.pop("tokens_per_month", None)
    return {**traffic, **traffic_options}


def scenario_table(scenario: Scenario, gpu: GpuSpec, cost: ScenarioCost) -> Table:
    """Build one scenario's table: each output, its value, and the arithmetic behind it with the inputs filled in."""
    table = Table(title=f"{cost.name} on {cost.gpu}", show_header=True, title_justify="left")
    table.add_column("output")
    table.add_column("value", justify="right")
    table.add_column("from")
    for row in _rows(scenario, gpu, cost):
        table.add_row(*row)
    return table


def _rows(scenario: Scenario, gpu: GpuSpec, cost: ScenarioCost) -> list[tuple[str, str, str]]:
    memory_gib = cost.weights_gib * scenario.memory_overhead_factor
    heads = f", rounded up to a divisor of {scenario.attention_heads} heads" if scenario.attention_heads else ""
    capacity = scenario.throughput_tokens_per_s * scenario.utilisation
    return [
        (
            "weights",
            f"{_amount(cost.weights_gib)} GiB",
            f"{_count(scenario.parameters)} parameters x {scenario.bits_per_weight:g}/8 bytes",
        ),
        (
            "GPUs per replica",
            str(cost.gpus_per_replica),
            f"memory bound: {_amount(cost.weights_gib)} GiB x {scenario.memory_overhead_factor:g} overhead / "
            f"{gpu.memory_gib:g} GiB = {_amount(memory_gib / gpu.memory_gib)}{heads}",
        ),
        (
            "GPUs for the peak",
            str(cost.gpus_for_peak),
            f"throughput bound: {cost.peak_tokens_per_s:,.0f} tokens/s peak / "
            f"({scenario.throughput_tokens_per_s:,.4g} tokens/s x {scenario.utilisation:g} utilisation)"
            f" = {cost.peak_tokens_per_s / capacity:,.2f}",
        ),
        ("GPUs", str(cost.gpus), f"{cost.replicas} replicas of {cost.gpus_per_replica}, enough for the peak"),
        ("GPU cost", _usd(cost.gpu_usd), f"{cost.gpus} x {gpu.hourly_usd:g} USD/h x {HOURS_PER_MONTH:g} h"),
        (
            "energy",
            f"{cost.energy_kwh:,.0f} kWh",
            f"{cost.gpus} x {gpu.power_w:g} W x {HOURS_PER_MONTH:g} h x PUE {scenario.pue:g}",
        ),
        ("energy cost", _usd(cost.energy_usd), f"x {scenario.energy_usd_per_kwh:g} USD/kWh; {_energy_note(cost)}"),
        (
            "engineering cost",
            _usd(cost.engineering_usd),
            f"{scenario.engineering_hours_per_month:g} h x {scenario.engineering_usd_per_hour:g} USD/h",
        ),
        ("total per month", _usd(cost.total_usd), "GPU + billed energy + engineering"),
        (
            "cost per 1M tokens",
            _usd(cost.usd_per_1m_tokens, cents=True),
            f"over {cost.tokens_per_month / 1e6:,.0f}M tokens a month",
        ),
        ("throughput source", "", cost.throughput_source),
    ]


def comparison_table(costs: list[ScenarioCost], ratios: dict[str, float]) -> Table:
    """Build the table of every scenario's GPUs, monthly total, cost per 1M tokens and ratio to the cheapest."""
    table = Table(title="comparison", show_header=True, title_justify="left")
    for header in ("scenario", "GPUs", "total per month", "per 1M tokens", "x cheapest"):
        table.add_column(header, justify="left" if header == "scenario" else "right")
    for cost in costs:
        ratio = f"{ratios[cost.name]:.1f}x"
        table.add_row(cost.name, str(cost.gpus), _usd(cost.total_usd), _usd(cost.usd_per_1m_tokens, cents=True), ratio)
    return table


def ratio_line(costs: list[ScenarioCost], ratios: dict[str, float]) -> str:
    """Return one sentence: the costliest scenario per token against the cheapest."""
    cheapest = min(costs, key=lambda cost: cost.usd_per_1m_tokens)
    costliest = max(costs, key=lambda cost: cost.usd_per_1m_tokens)
    if cheapest is costliest:
        return f"one scenario: {cheapest.name}"
    return f"{costliest.name} costs {ratios[costliest.name]:.1f}x as much per token as {cheapest.name}"


def write_cost_chart(costs: list[ScenarioCost], path: Path) -> None:
    """Write a horizontal stacked bar per scenario (GPU, billed energy, engineering) to `path` (.svg or .html)."""
    check_chart_path(path)
    svg = cost_chart_svg(costs)
    if path.suffix == ".html":
        svg = f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>sluice tco</title></head>\n<body>\n{svg}\n</body></html>\n'
    path.write_text(svg, encoding="utf-8")


def cost_chart_svg(costs: list[ScenarioCost]) -> str:
    """Return the SVG bar chart of monthly cost per scenario, one segment per cost component."""
    height = _MARGIN_TOP + len(costs) * (_BAR_HEIGHT + _BAR_GAP) + _MARGIN_BOTTOM
    plot_width = _WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT
    scale = plot_width / max(cost.total_usd for cost in costs)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="{_MARGIN_LEFT}" y="20" font-size="14">monthly cost per scenario (USD)</text>',
        *_legend(),
    ]
    for index, cost in enumerate(costs):
        top = _MARGIN_TOP + index * (_BAR_HEIGHT + _BAR_GAP)
        middle = top + _BAR_HEIGHT / 2 + 4
        parts.append(f'<text x="{_MARGIN_LEFT - 6}" y="{middle}" text-anchor="end">{escape(cost.name)}</text>')
        left = float(_MARGIN_LEFT)
        for component, value in _components(cost).items():
            width = value * scale
            colour = _COMPONENT_COLOURS[component]
            parts.append(
                f'<rect x="{left:.1f}" y="{top}" width="{width:.1f}" height="{_BAR_HEIGHT}" fill="{colour}">'
                f"<title>{escape(component)}: {_usd(value)}</title></rect>"
            )
            left += width
        parts.append(f'<text x="{left + 6:.1f}" y="{middle}">{_usd(cost.total_usd)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _components(cost: ScenarioCost) -> dict[str, float]:
    return {"GPU": cost.gpu_usd, "energy (billed)": cost.energy_billed_usd, "engineering": cost.engineering_usd}


def _legend() -> list[str]:
    parts = []
    for index, (component, colour) in enumerate(_COMPONENT_COLOURS.items()):
        x = _MARGIN_LEFT + index * 130
        parts.append(f'<rect x="{x}" y="30" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="39">{escape(component)}</text>')
    return parts


def _energy_note(cost: ScenarioCost) -> str:
    if cost.energy_billed_usd == 0 and cost.energy_usd > 0:
        return "the GPU price includes it, so the total leaves it out"
    return "added to the total"


def _amount(value: float) -> str:
    """Format with one decimal, or three significant digits below 10 so that small values do not print as 0.0."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def _count(value: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:,.4g}{suffix}"
    return f"{value:,.0f}"


def _usd(value: float, cents: bool = False) -> str:
    return f"${value:,.2f}" if cents else f"${value:,.0f}"
