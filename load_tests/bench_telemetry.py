"""Telemetry ingest: publish events to JetStream as fast as possible and time until telemetry has stored them all.

A nats-server and the telemetry service (`python -m services.telemetry`, its
own process, chDB under a temporary folder) start for the run. A warm-up
batch is published and drained first. Then the measured batch is built,
the clock starts, and the batch is published to JetStream, each message
with a reply subject on which the server acks it. The clock stops when the
`telemetry` durable consumer has nothing pending and nothing
unacknowledged. The service acks a message only after its insert returned,
so at that moment ClickHouse contains every event. The row count is then
read through the store API to confirm it.

Run alone: `python -m load_tests.bench_telemetry [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
import psutil
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from load_tests.event_mix import EventMessage, event_messages, mean_body_bytes, request_templates
from load_tests.report import BenchSection
from services.telemetry.settings import TelemetrySettings
from shared.bus import ensure_jetstream
from shared.embedded.infrastructure import ManagedProcess, die_with_parent, free_port, start_nats
from shared.settings import REPO_ROOT
from shared.store_client import StoreClient
from shared.subjects import EVENTS_STREAM, TELEMETRY_CONSUMER

HOST = "127.0.0.1"
COMMAND = "python -m load_tests.bench_telemetry"

FULL_EVENTS = 500_000
QUICK_EVENTS = 20_000
# Published and drained before the measured batch: it creates ClickHouse's
# first parts and, in a full run, gives the rate that sizes the measured batch.
FULL_WARMUP_EVENTS = 20_000
QUICK_WARMUP_EVENTS = 2_000
# A full run must end within about five minutes, service start included. When
# the warm-up's rate predicts that FULL_EVENTS would take longer than this,
# the measured batch shrinks to what fits.
FULL_INGEST_BUDGET_S = 180.0
# The measured batch is rounded down to a multiple of this.
BATCH_ROUNDING = 10_000

# Publishes not yet acked before the publisher waits: twice nats-py 2.16's
# default bound on pending async publishes (`publish_async_max_pending`).
PUBLISH_WINDOW = 8_000
# Room in nats-py's outgoing buffer before a publish waits for a flush: a
# window of the largest events (prompts of 2,000 characters).
PUBLISH_BUFFER_BYTES = 64 * 1024 * 1024
# One window's acks take milliseconds, so this only turns a lost ack into a failed run instead of a hang.
ACK_TIMEOUT_S = 30.0
# The service imports chDB and opens ClickHouse before it fetches: seconds on two cores.
SERVICE_START_TIMEOUT_S = 120.0
# How often the consumer's progress and the service's memory are sampled.
POLL_INTERVAL_S = 0.05
# The drain may take this many times as long as the warm-up's rate predicts.
# After that the run stops the clock and reports the rate of what was acked.
DRAIN_TIMEOUT_FACTOR = 1.5
# The shortest drain timeout, and the warm-up's, whose rate is not known yet.
MIN_DRAIN_TIMEOUT_S = 60.0
# The service gets this long to stop after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0

COUNT_SQL = "SELECT count() FROM events FINAL"


class BenchError(RuntimeError):
    """The benchmark could not run: a process exited, a wait timed out or JetStream dropped a message."""


@dataclass(frozen=True)
class BatchResult:
    """What one published batch cost, from its first publish until telemetry acked every event or the drain timed out."""

    events: int
    # Events acked by telemetry when the clock stopped: `events` unless the drain timed out.
    acked: int
    publish_s: float
    ingest_s: float
    service_cpu_s: float
    nats_cpu_s: float
    publisher_cpu_s: float
    # Building the messages before the clock started, in this process.
    build_cpu_s: float
    service_peak_rss_bytes: int

    @property
    def publish_rate(self) -> float:
        return self.events / self.publish_s

    @property
    def ingest_rate(self) -> float:
        return self.acked / self.ingest_s

    @property
    def complete(self) -> bool:
        return self.acked == self.events


class ProcessWatch:
    """CPU time and the peak of sampled resident memory of one process."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.peak_rss_bytes = 0

    def cpu_s(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def sample_rss(self) -> int:
        rss = self._process.memory_info().rss
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        return rss


def telemetry_environment(nats_url: str, data_dir: Path) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        {
            "SLUICE_NATS_URL": nats_url,
            "SLUICE_DATA_DIR": str(data_dir),
            "SLUICE_CLICKHOUSE_DSN": f"chdb:///{data_dir / 'clickhouse'}",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return environment


def start_telemetry(nats_url: str, data_dir: Path) -> ManagedProcess:
    """Start `python -m services.telemetry` with its output in `data_dir/logs/telemetry.log`."""
    log_path = data_dir / "logs" / "telemetry.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.telemetry"],
            cwd=REPO_ROOT,
            env=telemetry_environment(nats_url, data_dir),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    return ManagedProcess("telemetry", process, 0, log_path)


def raise_if_exited(service: ManagedProcess) -> None:
    code = service.process.poll()
    if code is not None:
        raise BenchError(f"the telemetry service exited with code {code}; see {service.log_path}")


async def wait_until_fetching(jetstream: JetStreamContext, service: ManagedProcess) -> None:
    """Wait until the service has a pull request waiting on its durable consumer."""
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        raise_if_exited(service)
        try:
            info = await jetstream.consumer_info(EVENTS_STREAM, TELEMETRY_CONSUMER.durable)
        except NotFoundError:
            info = None
        if info is not None and info.num_waiting:
            return
        await asyncio.sleep(POLL_INTERVAL_S)
    raise BenchError(f"the telemetry service did not fetch within {SERVICE_START_TIMEOUT_S} s; see {service.log_path}")


class PublishAcks:
    """Counts JetStream's publish acks, which all arrive on one inbox subscription.

    A publish ack is `{"stream":…,"seq":…}`, with `"duplicate":true` when the
    server dropped the message as a copy, or `{"error":…}`. A reply without a
    body is a status such as 503, when no stream takes the subject.
    """

    def __init__(self) -> None:
        self.acked = 0
        self.duplicates = 0
        self.errors = 0
        self._progress = asyncio.Event()

    async def receive(self, message: Msg) -> None:
        self.acked += 1
        if not message.data or b'"error"' in message.data:
            self.errors += 1
        elif b'"duplicate"' in message.data:
            self.duplicates += 1
        self._progress.set()

    async def wait_for(self, count: int) -> None:
        """Wait until `count` acks arrived. Raises `BenchError` after `ACK_TIMEOUT_S` without progress."""
        while self.acked < count:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), ACK_TIMEOUT_S)
            except asyncio.TimeoutError as error:
                raise BenchError(f"JetStream acked {self.acked:,} of {count:,} publishes; none for {ACK_TIMEOUT_S} s") from error

    def check(self) -> None:
        """Raise `BenchError` when JetStream rejected a message or dropped one as a duplicate."""
        if self.errors:
            raise BenchError(f"JetStream rejected {self.errors} publishes; see the nats-server log")
        if self.duplicates:
            raise BenchError(f"JetStream dropped {self.duplicates} messages as duplicates; every event id must be new")


async def publish_all(client: NatsClient, messages: list[EventMessage]) -> int:
    """Publish every message with at most `PUBLISH_WINDOW` unacked, and return the count once all are acked.

    Raises `BenchError` when an ack is missing, an error or a duplicate.
    """
    acks = PublishAcks()
    inbox = client.new_inbox()
    subscription = await client.subscribe(inbox, cb=acks.receive, pending_msgs_limit=2 * PUBLISH_WINDOW)
    try:
        for published, message in enumerate(messages, start=1):
            headers = {"Nats-Msg-Id": message.event_id}
            await client.publish(message.subject, message.body, reply=inbox, headers=headers)
            if published - acks.acked >= PUBLISH_WINDOW:
                await client.flush()
                await acks.wait_for(published - PUBLISH_WINDOW // 2)
        await client.flush()
        await acks.wait_for(len(messages))
    finally:
        await subscription.unsubscribe()
    acks.check()
    return acks.acked


async def wait_until_acked(
    jetstream: JetStreamContext, service: ManagedProcess, watch: ProcessWatch, first_sequence: int, timeout_s: float
) -> int | None:
    """Wait until the telemetry consumer has nothing pending and nothing unacked, sampling the service's memory.

    Returns None when it got there. After `timeout_s`, returns how many
    messages from stream sequence `first_sequence` on were acked, read from
    the consumer's ack floor.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        raise_if_exited(service)
        watch.sample_rss()
        info = await jetstream.consumer_info(EVENTS_STREAM, TELEMETRY_CONSUMER.durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return None
        if time.monotonic() >= deadline:
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            return max(0, floor - first_sequence + 1)
        await asyncio.sleep(POLL_INTERVAL_S)


async def sample_memory(watch: ProcessWatch) -> None:
    while True:
        watch.sample_rss()
        await asyncio.sleep(POLL_INTERVAL_S)


async def ingest_batch(
    client: NatsClient,
    service: ManagedProcess,
    nats_server: ManagedProcess,
    count: int,
    drain_timeout_s: float,
) -> BatchResult:
    """Build `count` new events, then publish them and time until telemetry has acked them all.

    The clock also stops `drain_timeout_s` after the last publish ack. `BatchResult.acked` then contains how
    many events telemetry had acked by that time.
    """
    jetstream = client.jetstream()
    service_watch = ProcessWatch(service.process.pid)
    nats_watch = ProcessWatch(nats_server.process.pid)
    build_cpu_before = time.process_time()
    messages = list(event_messages(request_templates(), count))
    build_cpu_s = time.process_time() - build_cpu_before
    first_sequence = (await jetstream.stream_info(EVENTS_STREAM)).state.last_seq + 1
    service_cpu_before, nats_cpu_before = service_watch.cpu_s(), nats_watch.cpu_s()
    publisher_cpu_before = time.process_time()
    sampler = asyncio.create_task(sample_memory(service_watch))

    started = time.perf_counter()
    try:
        await publish_all(client, messages)
        published = time.perf_counter()
        acked_at_timeout = await wait_until_acked(jetstream, service, service_watch, first_sequence, drain_timeout_s)
    finally:
        sampler.cancel()
    finished = time.perf_counter()

    return BatchResult(
        events=count,
        acked=count if acked_at_timeout is None else acked_at_timeout,
        publish_s=published - started,
        ingest_s=finished - started,
        service_cpu_s=service_watch.cpu_s() - service_cpu_before,
        nats_cpu_s=nats_watch.cpu_s() - nats_cpu_before,
        publisher_cpu_s=time.process_time() - publisher_cpu_before,
        build_cpu_s=build_cpu_s,
        service_peak_rss_bytes=service_watch.peak_rss_bytes,
    )


@dataclass(frozen=True)
class IngestRun:
    """Both batches of one run and the row count read back from ClickHouse afterwards."""

    warmup: BatchResult
    measured: BatchResult
    idle_rss_bytes: int
    stored_rows: int

    @property
    def expected_rows(self) -> int:
        """Rows that ClickHouse must hold at least: every event acked before the count."""
        return self.warmup.acked + self.measured.acked


def measured_batch_size(quick: bool, warmup_rate: float) -> int:
    """Return `QUICK_EVENTS`, or `FULL_EVENTS` cut to what the warm-up's rate ingests within the budget."""
    if quick:
        return QUICK_EVENTS
    fits = int(warmup_rate * FULL_INGEST_BUDGET_S) // BATCH_ROUNDING * BATCH_ROUNDING
    return max(BATCH_ROUNDING, min(FULL_EVENTS, fits))


def drain_timeout_s(count: int, warmup_rate: float) -> float:
    return max(MIN_DRAIN_TIMEOUT_S, DRAIN_TIMEOUT_FACTOR * count / warmup_rate)


async def declare_topology(nats_url: str) -> None:
    client = await nats.connect(nats_url)
    try:
        await ensure_jetstream(client.jetstream())
    finally:
        await client.close()


async def count_rows(client: NatsClient) -> int:
    page = await StoreClient(client).query(COUNT_SQL)
    return int(page.rows[0][0])


async def measure(nats_url: str, nats_server: ManagedProcess, service: ManagedProcess, quick: bool) -> IngestRun:
    """Wait for the service, ingest the warm-up and the measured batch, then count the stored rows."""
    client = await nats.connect(nats_url, pending_size=PUBLISH_BUFFER_BYTES)
    try:
        await wait_until_fetching(client.jetstream(), service)
        idle_rss_bytes = ProcessWatch(service.process.pid).sample_rss()

        warmup_events = QUICK_WARMUP_EVENTS if quick else FULL_WARMUP_EVENTS
        warmup = await ingest_batch(client, service, nats_server, warmup_events, MIN_DRAIN_TIMEOUT_S)
        if not warmup.complete:
            raise BenchError(
                f"telemetry acked {warmup.acked:,} of {warmup.events:,} warm-up events within "
                f"{MIN_DRAIN_TIMEOUT_S:.0f} s of the last publish; see {service.log_path}"
            )
        count = measured_batch_size(quick, warmup.ingest_rate)
        timeout_s = drain_timeout_s(count, warmup.ingest_rate)
        measured = await ingest_batch(client, service, nats_server, count, timeout_s)

        return IngestRun(warmup, measured, idle_rss_bytes, await count_rows(client))
    finally:
        await client.close()


def run_ingest(quick: bool) -> IngestRun:
    """Start nats-server and the telemetry service in a temporary folder, measure, and stop both."""
    with tempfile.TemporaryDirectory(prefix="sluice-bench-telemetry-") as folder:
        data_dir = Path(folder)
        nats_server = start_nats(HOST, free_port(), data_dir, data_dir / "logs")
        service: ManagedProcess | None = None
        try:
            nats_url = f"nats://{HOST}:{nats_server.port}"
            asyncio.run(declare_topology(nats_url))
            service = start_telemetry(nats_url, data_dir)
            return asyncio.run(measure(nats_url, nats_server, service, quick))
        finally:
            if service is not None:
                service.stop(STOP_TIMEOUT_S)
            nats_server.stop()


MIB = 1024 * 1024


def measured_events(batch: BatchResult) -> str:
    if batch.complete:
        return f"{batch.events:,}"
    return f"{batch.events:,} published, {batch.acked:,} acked when the drain timed out"


def service_cpu(batch: BatchResult) -> str:
    if not batch.acked:
        return f"{batch.service_cpu_s:.1f} s"
    return f"{batch.service_cpu_s:.1f} s ({batch.service_cpu_s / batch.acked * 1e6:.0f} µs per acked event)"


def building_cpu(batch: BatchResult) -> str:
    return f"{batch.build_cpu_s:.1f} s of CPU ({batch.build_cpu_s / batch.events * 1e6:.1f} µs per event)"


def result_rows(result: IngestRun, envelope_bytes: float) -> list[list[str]]:
    measured = result.measured
    idle_rss_mib, peak_rss_mib = result.idle_rss_bytes / MIB, measured.service_peak_rss_bytes / MIB
    return [
        ["events in the measured batch", measured_events(measured)],
        ["mean envelope size", f"{envelope_bytes:,.0f} bytes"],
        ["publish rate (first publish to last publish ack)", f"{measured.publish_rate:,.0f} events/s"],
        ["ingest rate (first publish to every event acked by telemetry)", f"{measured.ingest_rate:,.0f} events/s"],
        ["drain after the last publish ack", f"{measured.ingest_s - measured.publish_s:.2f} s"],
        ["telemetry CPU", service_cpu(measured)],
        ["telemetry RSS, idle / peak", f"{idle_rss_mib:,.0f} / {peak_rss_mib:,.0f} MiB"],
        ["nats-server CPU", f"{measured.nats_cpu_s:.1f} s"],
        ["publisher CPU (this process)", f"{measured.publisher_cpu_s:.1f} s"],
        ["building the messages before the clock (this process)", building_cpu(measured)],
        ["rows in ClickHouse (`SELECT count() FROM events FINAL`)", f"{result.stored_rows:,} of {result.expected_rows:,}"],
    ]


def result_notes(result: IngestRun, quick: bool) -> list[str]:
    tuning = TelemetrySettings()
    warmup = result.warmup
    notes = [
        f"A warm-up batch of {warmup.events:,} events was published and drained first "
        f"({warmup.ingest_rate:,.0f} events/s); its rows are in the count above.",
        "One publisher in this process publishes each message with nats-py's `publish`, a Nats-Msg-Id header "
        "and a reply subject on which JetStream acks it. One subscription counts the acks, and at most "
        f"{PUBLISH_WINDOW:,} messages are unacked at a time. The rate counts until every message was acked.",
        "The messages are built before the clock starts, so neither the rates nor the publisher CPU include "
        "building them; the row above gives that cost.",
        "Events are the seven events of delivered requests (accepted, screened, assigned, first token, "
        "completed, moderated, delivered) over 4 tenants, prompts of 200 to 2,000 characters and outputs of "
        "300 or 1,200 characters.",
        f"The telemetry service runs with batch_size {tuning.batch_size} and fetch_timeout_s {tuning.fetch_timeout_s} "
        "(SLUICE_TELEMETRY_* in the environment). ClickHouse runs in the service's process (chDB).",
        "The service hands a batch that is not full to ClickHouse only after fetch_timeout_s, so the drain "
        "can end with up to that long of waiting.",
        "The publisher, nats-server and telemetry share the machine's cores, so the CPU rows show where they went. "
        f"Peak RSS is the largest of samples taken every {POLL_INTERVAL_S} s.",
    ]
    if not quick and result.measured.events < FULL_EVENTS:
        notes.append(
            f"The measured batch is {result.measured.events:,} events, not {FULL_EVENTS:,}: at the warm-up's rate "
            f"{FULL_EVENTS:,} events would take longer than the {FULL_INGEST_BUDGET_S:.0f} s budget of this "
            "benchmark. The rates above come from the smaller batch."
        )
    if not result.measured.complete:
        notes.append(
            f"The drain timed out at {DRAIN_TIMEOUT_FACTOR} times the time that the warm-up's rate predicted. The "
            "ingest rate counts only the events acked by then, and ClickHouse may hold more rows than were acked."
        )
    elif result.stored_rows != result.expected_rows:
        notes.append(
            f"ClickHouse holds {result.stored_rows:,} rows but {result.expected_rows:,} events were acked: "
            "the ingest rate above does not describe a correct run."
        )
    return notes


def run(quick: bool) -> BenchSection:
    """Measure telemetry ingest: a warm-up batch, then the measured batch, against a fresh stack."""
    result = run_ingest(quick)
    return BenchSection(
        title="Telemetry ingest: JetStream to ClickHouse",
        command=COMMAND + (" --quick" if quick else ""),
        headers=["measure", "value"],
        rows=result_rows(result, mean_body_bytes(request_templates())),
        baseline="the publish rate is how fast one publisher gets events into JetStream in the same run; "
        "ingest cannot be faster.",
        notes=result_notes(result, quick),
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_EVENTS:,} events instead of up to {FULL_EVENTS:,}"
    )
    print(run(quick=parser.parse_args().quick).to_markdown())


if __name__ == "__main__":
    main()
