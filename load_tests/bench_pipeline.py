"""The pipeline overhead benchmark: the latency and CPU the whole Sluice pipeline adds to a zero-cost backend.

At each fixed arrival rate the open-loop generator sends requests (a)
straight to the zero backend and (b) through the embedded stack, whose every
variant streams from the same backend. The added latency is (b) minus (a) per
percentile. Each service's CPU time is read before a pipeline run and after
its consumers drained, less its idle use, and divided by the requests sent.
Then a short search finds the highest rate whose added total p99 stays
within the limit.

The generator runs in this process on the same cores as the stack, so at
high rates it takes CPU from the services. Its own CPU per request and its
launch lag are reported beside the figures.

Run it alone with `python -m load_tests.bench_pipeline [--quick] [--data-dir DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from load_tests.open_loop import LoadResult, run_open_loop
from load_tests.open_loop_clients import DirectClient, PipelineClient
from load_tests.pipeline_results import (
    LATENCY_HEADERS,
    PipelineOutcome,
    RateMeasurement,
    cpu_table,
    idle_note,
    latency_rows,
    search_note,
    warning_notes,
)
from load_tests.pipeline_stack import (
    ZeroBackend,
    bench_folder,
    cpu_seconds,
    process_pids,
    started_stack,
    wait_until_drained,
)
from load_tests.rate_search import RateSearch
from load_tests.report import BenchSection
from shared.embedded.stack import EmbeddedStack

# The arrival rates and the tokens per request that the benchmark reports.
RATES_RPS = (50.0, 100.0, 200.0, 500.0)
QUICK_RATES_RPS = (50.0, 100.0)
TOKENS_PER_REQUEST = 32
# The rate search doubles at most up to this rate.
SEARCH_MAX_RATE_RPS = 2000.0
# A short benign prompt, so that screening passes it and does its usual work.
PROMPT = "Write four short lines about a lighthouse keeper who counts the ships at night."


@dataclass(frozen=True)
class Plan:
    """How long each part runs. Every time is in seconds."""

    rates_rps: tuple[float, ...]
    run_s: float
    warmup_s: float
    warmup_rate_rps: float
    search_direct_s: float
    search_pipeline_s: float
    search_steps: int
    # The search starts no new step after this long.
    search_budget_s: float
    # A request still running this long after its due time counts as a
    # timeout, and the stages drop it as expired, so an overloaded run's
    # backlog clears soon after it.
    request_timeout_s: float
    # The bound on waiting for the consumers to drain after a pipeline run.
    drain_timeout_s: float
    # How long the idle CPU use of every process is measured.
    idle_s: float


# About 20 s per rate and path, and a search of about a minute: five to six minutes in all with the stack start
# when the pipeline keeps up, up to about eight when every rate overloads it.
FULL_PLAN = Plan(rates_rps=RATES_RPS, run_s=20.0, warmup_s=5.0, warmup_rate_rps=20.0, search_direct_s=3.0,
                 search_pipeline_s=8.0, search_steps=4, search_budget_s=60.0, request_timeout_s=10.0,
                 drain_timeout_s=20.0, idle_s=3.0)
# Seconds per run, for development and the smoke run. Its figures are noise.
QUICK_PLAN = Plan(rates_rps=QUICK_RATES_RPS, run_s=3.0, warmup_s=2.0, warmup_rate_rps=20.0, search_direct_s=2.0,
                  search_pipeline_s=2.0, search_steps=2, search_budget_s=15.0, request_timeout_s=5.0,
                  drain_timeout_s=15.0, idle_s=1.0)


def pipeline_body() -> dict[str, Any]:
    """Return the `POST /v1/requests` body. Its generation parameters come from the benchmark's variants."""
    return {"messages": [{"role": "user", "content": PROMPT}]}


def direct_body() -> dict[str, Any]:
    """Return the chat completion body the inference service sends for `pipeline_body()`."""
    return {
        "model": "tgi",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": TOKENS_PER_REQUEST,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


class PipelineBench:
    """Runs the direct and pipeline paths against a started stack and zero backend."""

    def __init__(self, stack: EmbeddedStack, backend: ZeroBackend, plan: Plan) -> None:
        self._stack = stack
        self._backend = backend
        self._plan = plan
        self._pids = process_pids(stack, backend)
        # CPU milliseconds per second each process uses with no traffic, subtracted from every run.
        self.idle_ms_per_s = dict.fromkeys(self._pids, 0.0)

    def direct(self, rate_rps: float, duration_s: float) -> LoadResult:
        return asyncio.run(self._direct(rate_rps, duration_s))

    async def _direct(self, rate_rps: float, duration_s: float) -> LoadResult:
        async with DirectClient(self._backend.url, direct_body()) as client:
            return await run_open_loop(client.send, rate_rps, duration_s, self._plan.request_timeout_s)

    def pipeline(self, rate_rps: float, duration_s: float) -> tuple[LoadResult, dict[str, float], bool]:
        """Run the pipeline path and wait for its consumers to drain.

        Returns the result, each process's CPU ms per request and whether the consumers drained.
        """
        started = time.monotonic()
        before = cpu_seconds(self._pids)
        result = asyncio.run(self._pipeline(rate_rps, duration_s))
        drained = self._drain()
        after = cpu_seconds(self._pids)
        elapsed_s = time.monotonic() - started
        sent = max(result.sent, 1)
        cpu_ms = {
            name: (1000.0 * (after[name] - before[name]) - self.idle_ms_per_s[name] * elapsed_s) / sent
            for name in self._pids
        }
        return result, cpu_ms, drained

    def _drain(self) -> bool:
        return asyncio.run(wait_until_drained(self._stack.settings.resolved_nats_url, self._plan.drain_timeout_s))

    def measure_idle(self) -> None:
        """Measure each process's CPU use with no traffic, after the consumers drained."""
        self._drain()
        before = cpu_seconds(self._pids)
        time.sleep(self._plan.idle_s)
        after = cpu_seconds(self._pids)
        self.idle_ms_per_s = {name: 1000.0 * (after[name] - before[name]) / self._plan.idle_s for name in self._pids}

    async def _pipeline(self, rate_rps: float, duration_s: float) -> LoadResult:
        async with PipelineClient(self._stack.http_url, self._stack.api_key, pipeline_body()) as client:
            return await run_open_loop(client.send, rate_rps, duration_s, self._plan.request_timeout_s)

    def measure(self, rate_rps: float, direct_s: float, pipeline_s: float) -> RateMeasurement:
        direct = self.direct(rate_rps, direct_s)
        pipeline, cpu_ms, drained = self.pipeline(rate_rps, pipeline_s)
        return RateMeasurement(rate_rps, direct, pipeline, cpu_ms, drained)

    def warm_up(self) -> None:
        """Send a few seconds of light traffic on both paths, so imports, connections and caches are warm."""
        self.direct(self._plan.warmup_rate_rps, self._plan.warmup_s)
        self.pipeline(self._plan.warmup_rate_rps, self._plan.warmup_s)
        self.measure_idle()

    def search(self, measured: list[RateMeasurement]) -> tuple[RateSearch, list[RateMeasurement]]:
        """Bisect from the fixed rates' results with short runs, stopping after the plan's steps or time budget."""
        search = RateSearch(max_rate_rps=SEARCH_MAX_RATE_RPS)
        for measurement in measured:
            search.record(measurement.rate_rps, measurement.sustained())
        probes: list[RateMeasurement] = []
        deadline = time.monotonic() + self._plan.search_budget_s
        while len(probes) < self._plan.search_steps and time.monotonic() < deadline:
            rate = search.next_rate()
            if rate is None:
                break
            probe = self.measure(rate, self._plan.search_direct_s, self._plan.search_pipeline_s)
            search.record(rate, probe.sustained())
            probes.append(probe)
        return search, probes


def run(quick: bool, data_dir: Path | None = None) -> BenchSection:
    """Start the zero backend and the stack, measure every rate on both paths, search the sustained rate, stop all.

    The config, streams and logs go to a temporary folder, or to `data_dir`
    when given, which is then kept so the services' logs can be read.
    """
    plan = QUICK_PLAN if quick else FULL_PLAN
    with (
        bench_folder(data_dir, "sluice-bench-pipeline-") as root,
        started_stack(root, TOKENS_PER_REQUEST, plan.request_timeout_s) as (stack, backend),
    ):
        outcome = _measure_all(PipelineBench(stack, backend, plan), plan)
    return _section(outcome, plan, quick)


def _measure_all(bench: PipelineBench, plan: Plan) -> PipelineOutcome:
    bench.warm_up()
    measured = [bench.measure(rate, plan.run_s, plan.run_s) for rate in plan.rates_rps]
    search, probes = bench.search(measured)
    return PipelineOutcome(measured, search, probes, bench.idle_ms_per_s)


def _section(outcome: PipelineOutcome, plan: Plan, quick: bool) -> BenchSection:
    method = [
        f"Each rate runs {plan.run_s:.0f} s per path with {TOKENS_PER_REQUEST} tokens per request and one fixed "
        f"{len(PROMPT)}-character prompt. Latency runs from each request's due time, so generator lag counts.",
        "TTFT ends at the first chunk (direct: the first response bytes; pipeline: the first WebSocket chunk), "
        "the total at the final message (direct: the end of the SSE stream). Both start at the POST.",
        "CPU per request is each process's user plus system time from before a pipeline run until its consumers "
        "drained, less its idle use, divided by the requests sent.",
    ]
    notes = [search_note(outcome.search, outcome.probes), *method, idle_note(outcome.idle_ms_per_s)]
    notes += warning_notes(outcome.measured + outcome.probes, plan.drain_timeout_s)
    if quick:
        notes.append("Quick run: a few seconds per rate, so these figures are noise.")
    return BenchSection(
        title="Pipeline overhead",
        command="python -m load_tests.bench_pipeline" + (" --quick" if quick else ""),
        headers=LATENCY_HEADERS,
        rows=[row for measurement in outcome.measured for row in latency_rows(measurement)],
        baseline="the same requests sent straight to the zero-cost backend (path direct) in the same run",
        notes=notes,
        tables=[cpu_table(outcome.measured)],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two rates for a few seconds each, for development")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the stack's data and logs in this folder (default: a temporary one)"
    )
    arguments = parser.parse_args(argv)
    print(run(quick=arguments.quick, data_dir=arguments.data_dir).to_markdown())


if __name__ == "__main__":
    main()
