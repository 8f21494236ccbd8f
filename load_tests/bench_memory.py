"""The memory benchmark: every process's resident memory over a long run at a fixed arrival rate.

The open-loop generator sends requests through the embedded stack to the
zero-cost backend, as the pipeline benchmark does, while a thread samples the
resident set size (RSS) of every process. A service whose memory keeps
growing under steady load leaks, or queues work it cannot keep up with.
The figures compare the RSS after the first minute (imports, caches and pools
warm) with the RSS at the end of the run.

Run it alone with `python -m load_tests.bench_memory [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from load_tests.bench_pipeline import TOKENS_PER_REQUEST, pipeline_body
from load_tests.open_loop import LoadResult, percentiles_ms, run_open_loop
from load_tests.open_loop_clients import PipelineClient
from load_tests.pipeline_stack import bench_folder, process_pids, started_stack
from load_tests.report import BenchSection

BYTES_PER_MIB = 1024 * 1024
# The largest change from the baseline to the end that still counts as flat, in percent.
FLAT_LIMIT_PERCENT = 10.0


@dataclass(frozen=True)
class Plan:
    """The run's rate and lengths. Every time is in seconds."""

    rate_rps: float
    run_s: float
    # The baseline is the RSS sampled this long after the run started.
    baseline_after_s: float
    sample_interval_s: float
    # A request still running this long after its due time counts as a timeout.
    request_timeout_s: float


FULL_PLAN = Plan(rate_rps=200.0, run_s=600.0, baseline_after_s=60.0, sample_interval_s=5.0, request_timeout_s=10.0)
# A few seconds at a lower rate, for development and the smoke run. Its figures are noise.
QUICK_PLAN = Plan(rate_rps=50.0, run_s=10.0, baseline_after_s=3.0, sample_interval_s=1.0, request_timeout_s=5.0)


@dataclass
class RssSampler:
    """Samples the RSS of every named process in a thread, every `interval_s` seconds, until stopped."""

    pids: dict[str, int]
    interval_s: float
    # (seconds since start, {name: RSS in bytes}) per sample.
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(time.monotonic() - self._started)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s if self.samples else 0.0):
            self._sample(time.monotonic() - self._started)

    def _sample(self, elapsed_s: float) -> None:
        self.samples.append((elapsed_s, {name: _rss_bytes(pid) for name, pid in self.pids.items()}))

    def at(self, elapsed_s: float) -> dict[str, int]:
        """Return the first sample taken at or after `elapsed_s`, or the last one."""
        return next((rss for when, rss in self.samples if when >= elapsed_s), self.samples[-1][1])

    def peak(self, name: str) -> int:
        return max(rss[name] for _when, rss in self.samples)


def _rss_bytes(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def run(quick: bool, data_dir: Path | None = None) -> BenchSection:
    """Start the zero backend and the stack, run the plan's load while sampling RSS, stop all."""
    plan = QUICK_PLAN if quick else FULL_PLAN
    with (
        bench_folder(data_dir, "sluice-bench-memory-") as root,
        started_stack(root, TOKENS_PER_REQUEST, plan.request_timeout_s) as (stack, backend),
    ):
        sampler = RssSampler(process_pids(stack, backend), plan.sample_interval_s)
        sampler.start()
        try:
            result = asyncio.run(_load(stack.http_url, stack.api_key, plan))
        finally:
            sampler.stop()
    return _section(result, sampler, plan, quick)


async def _load(http_url: str, api_key: str, plan: Plan) -> LoadResult:
    async with PipelineClient(http_url, api_key, pipeline_body()) as client:
        return await run_open_loop(client.send, plan.rate_rps, plan.run_s, plan.request_timeout_s)


def _section(result: LoadResult, sampler: RssSampler, plan: Plan, quick: bool) -> BenchSection:
    baseline = sampler.at(plan.baseline_after_s)
    end = sampler.samples[-1][1]
    rows = []
    for name in sampler.pids:
        change = 100.0 * (end[name] - baseline[name]) / baseline[name] if baseline[name] else float("nan")
        flat = "yes" if abs(change) <= FLAT_LIMIT_PERCENT else "no"
        rows.append([name, _mib(baseline[name]), _mib(end[name]), _mib(sampler.peak(name)), f"{change:+.1f}", flat])
    ttft = percentiles_ms(result.ttft_s)
    total = percentiles_ms(result.total_s)
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(result.errors.items())) or "none"
    notes = [
        f"{plan.rate_rps:.0f} requests/s for {plan.run_s:.0f} s through the whole pipeline to the zero-cost backend, "
        f"{TOKENS_PER_REQUEST} tokens each; RSS sampled every {plan.sample_interval_s:.0f} s.",
        f"Baseline: the RSS {plan.baseline_after_s:.0f} s into the run, once imports, caches and connection pools "
        f"are warm. Flat means the end is within {FLAT_LIMIT_PERCENT:.0f}% of it.",
        f"Requests: {result.sent:,} sent, {result.completed:,} completed, errors: {errors}. "
        f"Throughput {result.throughput_rps:.1f} req/s; TTFT p50/p99 {ttft[0]:.1f} / {ttft[2]:.1f} ms, "
        f"total p50/p99 {total[0]:.1f} / {total[2]:.1f} ms, from each request's due time.",
        "A service that cannot keep up with the rate holds the backlog in JetStream, not in its own memory, "
        "because every puller fetches only what it has room for; ingress holds one connection per waiting client.",
        "nats-server and redis-server are stores: they keep every event (the EVENTS stream's retention) and every "
        "status record and release log (until their TTL), so their memory grows with the data by design. "
        "The flatness target applies to the services.",
    ]
    if quick:
        notes.append("Quick run: a lower rate for seconds, so these figures are noise.")
    return BenchSection(
        title="Memory under steady load",
        command="python -m load_tests.bench_memory" + (" --quick" if quick else ""),
        headers=["process", "RSS at baseline (MiB)", "RSS at end (MiB)", "peak (MiB)", "change (%)", "flat"],
        rows=rows,
        baseline="each process's own RSS after the first part of the same run",
        notes=notes,
    )


def _mib(value_bytes: int) -> str:
    return f"{value_bytes / BYTES_PER_MIB:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a low rate for a few seconds, for development")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the stack's data and logs in this folder (default: a temporary one)"
    )
    arguments = parser.parse_args(argv)
    print(run(quick=arguments.quick, data_dir=arguments.data_dir).to_markdown())


if __name__ == "__main__":
    main()
