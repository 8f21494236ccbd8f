"""The demonstration's cost step: `sluice tco`'s built-in scenarios plus the served model at its measured tokens/s."""

from __future__ import annotations

from services.cli.tco import comparison_table, option_scenario, ratio_line, scenario_table, write_cost_chart
from services.cli.optimize_demo.run import TCO_CHART, DemoRun
from services.cli.optimize_demo.summary import command, markdown_table
from services.modelops.tco import cost_ratios, cost_scenario
from services.modelops.tco_file import DEFAULT_TCO_FILE, load_tco_file

# The catalogue's 2-vCPU cloud VM: the priced machine closest to the CPUs the throughput was measured on.
TCO_MACHINE = "cpu-2vcpu"
# Memory for the KV cache and activations next to the weights, as the docs' small-model scenario assumes.
TCO_MEMORY_OVERHEAD_FACTOR = 2.0
BITS_PER_BYTE = 8


def price(run: DemoRun) -> None:
    """Step 7: print every scenario's cost and the comparison, write the chart, and add the summary section."""
    run.console.rule("cost model")
    inputs = load_tco_file(DEFAULT_TCO_FILE)
    options = tco_options(run)
    name = str(options.pop("name"))
    scenarios = [*inputs.scenarios, option_scenario(inputs, name, None, options)]
    costs = [cost_scenario(scenario, inputs.gpus[scenario.gpu]) for scenario in scenarios]
    for scenario, cost in zip(scenarios, costs, strict=True):
        run.console.print(scenario_table(scenario, inputs.gpus[scenario.gpu], cost))
    ratios = cost_ratios(costs)
    run.console.print(comparison_table(costs, ratios))
    run.console.print(ratio_line(costs, ratios), markup=False)
    chart = run.options.path(TCO_CHART)
    write_cost_chart(costs, chart)
    run.console.print(f"wrote {chart}")

    rows = [[cost.name, cost.gpus, f"${cost.total_usd:,.0f}", f"${cost.usd_per_1m_tokens:,.2f}", f"{ratios[cost.name]:.1f}"] for cost in costs]
    lines = markdown_table(("scenario", "GPUs or machines", "total per month", "per 1M tokens", "× cheapest"), rows)
    lines += ["", f"The chart is `{chart}`."]
    run.summary.add("7. Cost model with the measured throughput", lines, [tco_command(run)])


def tco_options(run: DemoRun) -> dict[str, object]:
    """Return `sluice tco`'s options for the served model: its stored bits per weight and its measured tokens/s."""
    sizes = run.quantized[run.served].sizes
    return {
        "name": run.served,
        "parameters": run.parameters,
        # The whole state dict over the parameter count, so the fp32 embeddings and norms count too.
        "bits_per_weight": round(sizes.memory_bytes_after * BITS_PER_BYTE / run.parameters, 2),
        "memory_overhead_factor": TCO_MEMORY_OVERHEAD_FACTOR,
        "gpu": TCO_MACHINE,
        "throughput_tokens_per_s": round(run.evaluations[run.served].tokens_per_s, 1),
        "throughput_source": f"measured by sluice model eval of {run.served}: 1 CPU thread, one stream at a time",
    }


def tco_command(run: DemoRun) -> str:
    """Return the `sluice tco` command line that prices the served model as `price` does."""
    words: list[object] = ["sluice", "tco"]
    for key, value in tco_options(run).items():
        words += [f"--{key.replace('_', '-')}", value]
    return command(*words, "--chart", run.options.path(TCO_CHART))
