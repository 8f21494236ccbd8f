"""The pipeline overhead benchmark's measurements and the tables and notes that report them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from load_tests.open_loop import LoadResult, percentiles_ms
from load_tests.rate_search import RateSearch
from load_tests.report import BenchTable

# The sustained-rate check: no errors and added total p99 within this. A
# pipeline that falls behind fails it too, because its queues and so its
# latency keep growing.
ADDED_P99_LIMIT_MS = 50.0
# Processes in the CPU table: the services in request order, then the servers they use.
SERVICE_COLUMNS = ("ingress", "safety", "assignment", "inference", "moderation", "telemetry")
SERVER_COLUMNS = ("nats-server", "redis-server", "model_server")
ZERO_BACKEND_COLUMN = "zero backend"
# Launch lag (p99) above this gets a note. Below it the lag is the event
# loop's usual scheduling delay of a millisecond or two.
LAUNCH_LAG_WARNING_MS = 5.0

LATENCY_HEADERS = ["rate (req/s)", "path", "throughput (req/s)", "errors",
                   "TTFT p50 / p95 / p99 (ms)", "total p50 / p95 / p99 (ms)"]


@dataclass
class RateMeasurement:
    """Both paths at one rate, and each process's CPU milliseconds per pipeline request, idle use subtracted."""

    rate_rps: float
    direct: LoadResult
    pipeline: LoadResult
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    # Whether every consumer had drained when the CPU time was read after the pipeline run.
    drained: bool = True

    def added_ms(self, metric: str) -> list[float]:
        """Return pipeline minus direct at p50, p95 and p99 of `metric` ("ttft_s" or "total_s")."""
        pipeline = percentiles_ms(getattr(self.pipeline, metric))
        direct = percentiles_ms(getattr(self.direct, metric))
        return [through - straight for through, straight in zip(pipeline, direct)]

    def sustained(self) -> bool:
        """Return whether both paths had no errors and the added total p99 is within the limit."""
        no_errors = self.direct.error_count == 0 and self.pipeline.error_count == 0
        return no_errors and self.added_ms("total_s")[2] <= ADDED_P99_LIMIT_MS


@dataclass
class PipelineOutcome:
    """Everything one benchmark run measured."""

    measured: list[RateMeasurement]
    search: RateSearch
    probes: list[RateMeasurement]
    # CPU milliseconds per second of each process with no traffic.
    idle_ms_per_s: dict[str, float]


def _number(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _triplet(values: list[float]) -> str:
    return " / ".join(_number(value, 1) for value in values)


def _errors(result: LoadResult) -> str:
    if not result.errors:
        return "0"
    detail = ", ".join(f"{kind} {count}" for kind, count in result.errors.most_common())
    return f"{result.error_count} ({detail})"


def latency_rows(measurement: RateMeasurement) -> list[list[str]]:
    """Return the rows direct, pipeline and added (pipeline minus direct) of one rate."""
    rate = f"{measurement.rate_rps:.0f}"
    rows = []
    for path, result in (("direct", measurement.direct), ("pipeline", measurement.pipeline)):
        ttft, total = percentiles_ms(result.ttft_s), percentiles_ms(result.total_s)
        rows.append([rate, path, f"{result.throughput_rps:.1f}", _errors(result), _triplet(ttft), _triplet(total)])
    added = [_triplet(measurement.added_ms("ttft_s")), _triplet(measurement.added_ms("total_s"))]
    rows.append([rate, "added", "", "", *added])
    return rows


def cpu_table(measured: list[RateMeasurement]) -> BenchTable:
    """Return the table of CPU milliseconds per request of every process, and the generator's own."""
    headers = ["rate (req/s)", *SERVICE_COLUMNS, "six services", *SERVER_COLUMNS, ZERO_BACKEND_COLUMN,
               "generator, direct", "generator, pipeline"]
    rows = []
    for measurement in measured:
        cpu = measurement.cpu_ms_per_request
        services = [cpu.get(name, math.nan) for name in SERVICE_COLUMNS]
        servers = [cpu.get(name, math.nan) for name in (*SERVER_COLUMNS, ZERO_BACKEND_COLUMN)]
        generator = [measurement.direct.cpu_ms_per_request, measurement.pipeline.cpu_ms_per_request]
        cells = [*services, sum(services), *servers, *generator]
        rows.append([f"{measurement.rate_rps:.0f}"] + [_number(value, 2) for value in cells])
    return BenchTable("CPU milliseconds per request", headers, rows)


def search_note(search: RateSearch, probes: list[RateMeasurement]) -> str:
    """Return the sentence that reports the highest sustained rate and the probes that found it."""
    steps = ", ".join(
        f"{probe.rate_rps:.0f} req/s {'passed' if probe.sustained() else 'failed'} "
        f"(added total p99 {probe.added_ms('total_s')[2]:.1f} ms, {probe.pipeline.error_count} errors)"
        for probe in probes
    )
    passed = f"{search.passed_rps:.0f} req/s" if search.passed_rps is not None else "none of the rates tried"
    failed = f"{search.failed_rps:.0f} req/s" if search.failed_rps is not None else "none"
    return (
        f"Highest sustained rate (0 errors and added total p99 <= {ADDED_P99_LIMIT_MS:.0f} ms): {passed}; "
        f"lowest failing rate: {failed}. Search probes (short runs): {steps or 'none'}."
    )


def idle_note(idle_ms_per_s: dict[str, float]) -> str:
    used = ", ".join(f"{name} {value:.1f}" for name, value in idle_ms_per_s.items())
    return f"Idle CPU in ms per second, measured after the warm-up and subtracted from the figures above: {used}."


def warning_notes(measured: list[RateMeasurement], drain_timeout_s: float) -> list[str]:
    """Return a note for each run whose generator fell behind or whose consumers had not drained."""
    notes = []
    for measurement in measured:
        rate = f"{measurement.rate_rps:.0f} req/s"
        for path, result in (("direct", measurement.direct), ("pipeline", measurement.pipeline)):
            lag_p99 = percentiles_ms(result.launch_lag_s)[2]
            if lag_p99 > LAUNCH_LAG_WARNING_MS:
                notes.append(f"At {rate} ({path}) the generator started requests up to {lag_p99:.1f} ms late "
                             "(p99) because it was short of CPU, and the latencies include that delay.")
        if not measurement.drained:
            notes.append(f"At {rate} the consumers had not drained {drain_timeout_s:.0f} s after the run, "
                         "so its CPU figures miss work and later runs carry its backlog.")
    return notes
