"""`python -m services.telemetry` stores every event exactly once after a SIGKILL, and loses none after a SIGSTOP.

Each test runs a nats-server and a chDB folder of its own and publishes the
events of 1,000 completed requests (seven events each) at a steady rate while
the service runs as a child process. The counts come from the service's store
API, because chDB opens one data path per process and the service has it open.

The consumer redelivers unacked messages after its ack wait of 30 s
(`TELEMETRY_CONSUMER.ack_wait_s`), so each test took 35 to 40 s on two
cores. Where in the writer's cycle the kill lands is left to timing. A kill
between an insert and its acks is covered deterministically by
`test_batch_writer.py::test_redelivery_after_crash_not_stored_again`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from shared.events import Envelope
from shared.settings import REPO_ROOT
from shared.store_client import StoreClient, StoreUnavailable
from shared.subjects import EVENTS_STREAM, TELEMETRY_CONSUMER
from tests.ingress import event_builders as events
from tests.support.jetstream import private_nats, publish_envelope
from tests.support.services import spawn_service

pytestmark = [pytest.mark.nats, pytest.mark.clickhouse]

# The query under which the store promises exactly once (see services/telemetry/store.py).
EXACTLY_ONCE_SQL = "SELECT count(), uniqExact(event_id) FROM events FINAL WHERE tenant = {tenant:String}"

REQUESTS = 1_000
# The events of 1,000 requests go out over this many seconds, about 875 a
# second, so the service is killed or frozen while the load is running.
LOAD_DURATION_S = 8.0
# How long the SIGSTOP test keeps the service frozen before it sends SIGCONT.
FREEZE_S = 30.0
# The service imports chDB and opens ClickHouse before it replies to queries.
START_TIMEOUT_S = 60.0
# The ack wait after which JetStream redelivers the killed or frozen
# process's unacked messages, plus time to store them.
DRAIN_TIMEOUT_S = TELEMETRY_CONSUMER.ack_wait_s + 30.0
STOP_TIMEOUT_S = 15.0
QUERY_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.5


class TelemetryProcess:
    """Starts `python -m services.telemetry` as a child process, again after each kill, each run with its own log."""

    def __init__(self, environment: dict[str, str], log_dir: Path) -> None:
        self._environment = environment
        self._log_dir = log_dir
        self._runs: list[subprocess.Popen[bytes]] = []

    @property
    def current(self) -> subprocess.Popen[bytes]:
        return self._runs[-1]

    def start(self) -> None:
        self._runs.append(spawn_service("services.telemetry", self._environment, self._log_path(len(self._runs) + 1)))

    def send(self, signal_number: signal.Signals) -> None:
        self.current.send_signal(signal_number)

    def stop(self) -> None:
        """Stop the running process, after resuming it if it is frozen. Kill it if it does not stop in time."""
        process = self.current
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def log_tail(self, max_chars: int = 3000) -> str:
        """Return the end of each run's log, for assertion messages."""
        tails = []
        for run in range(1, len(self._runs) + 1):
            text = self._log_path(run).read_text(errors="replace")
            tails.append(f"--- run {run} ---\n{text[-max_chars:]}")
        return "\n".join(tails)

    def has_stored_a_batch(self) -> bool:
        """Return whether the running process logged a stored batch."""
        return "event_batch_stored" in self._log_path(len(self._runs)).read_text(errors="replace")

    def _log_path(self, run: int) -> Path:
        return self._log_dir / f"telemetry-{run}.log"


@pytest.fixture
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with private_nats(tmp_path_factory, "telemetry-crash") as url:
        yield url


@pytest.fixture
def telemetry(nats_url: str, tmp_path: Path) -> Iterator[TelemetryProcess]:
    environment = {
        **os.environ,
        "SLUICE_NATS_URL": nats_url,
        "SLUICE_DATA_DIR": str(tmp_path),
        "SLUICE_CLICKHOUSE_DSN": f"chdb:///{tmp_path / 'clickhouse'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = TelemetryProcess(environment, tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
async def connection(nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_url)
    yield client
    await client.close()


class Load:
    """Publishes the events of `REQUESTS` completed requests of one tenant over `LOAD_DURATION_S` seconds."""

    def __init__(self, jetstream: JetStreamContext) -> None:
        self.tenant = f"crash-{uuid.uuid4().hex[:8]}"
        self._jetstream = jetstream
        self._requests = [events.completed_sequence(events.accepted(tenant=self.tenant)) for _ in range(REQUESTS)]
        self.events = sum(len(request) for request in self._requests)
        self.published_requests = 0

    async def run(self) -> None:
        started = time.monotonic()
        interval_s = LOAD_DURATION_S / REQUESTS
        for index, request in enumerate(self._requests):
            await self._publish(request)
            self.published_requests += 1
            await asyncio.sleep(max(started + (index + 1) * interval_s - time.monotonic(), 0))

    async def _publish(self, request: list[Envelope]) -> None:
        for envelope in request:
            await publish_envelope(self._jetstream, envelope)


async def _wait_until_serving(store: StoreClient, telemetry: TelemetryProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            await store.query("SELECT 1", timeout_s=QUERY_TIMEOUT_S)
            return
        except StoreUnavailable:
            if time.monotonic() > deadline or telemetry.current.poll() is not None:
                pytest.fail(f"the telemetry service did not start:\n{telemetry.log_tail()}")
            await asyncio.sleep(POLL_INTERVAL_S)


async def _wait_for_half_load(load: Load, telemetry: TelemetryProcess) -> None:
    """Wait until half of the requests are published and the service has stored at least one batch."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while load.published_requests < REQUESTS // 2 or not telemetry.has_stored_a_batch():
        if time.monotonic() > deadline:
            pytest.fail(f"the telemetry service stored no batch:\n{telemetry.log_tail()}")
        await asyncio.sleep(0.05)


async def _count_exactly_once(store: StoreClient, tenant: str) -> tuple[int, int]:
    """Return the rows and the distinct event ids of `tenant` under FINAL."""
    page = await store.query(EXACTLY_ONCE_SQL, {"tenant": tenant}, timeout_s=QUERY_TIMEOUT_S)
    [[rows, event_ids]] = page.rows
    return int(rows), int(event_ids)


async def _wait_until_drained(
    store: StoreClient, jetstream: JetStreamContext, load: Load, telemetry: TelemetryProcess
) -> tuple[tuple[int, int], ConsumerInfo]:
    """Wait until every published event is stored and the consumer has nothing pending, or `DRAIN_TIMEOUT_S` passed.

    Returns the last counts and consumer state.
    """
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        counts = await _count_exactly_once(store, load.tenant)
        info = await jetstream.consumer_info(EVENTS_STREAM, TELEMETRY_CONSUMER.durable)
        drained = counts[1] >= load.events and info.num_pending == 0 and info.num_ack_pending == 0
        if drained or time.monotonic() > deadline:
            return counts, info
        assert telemetry.current.poll() is None, f"the telemetry service exited:\n{telemetry.log_tail()}"
        await asyncio.sleep(POLL_INTERVAL_S)


async def test_sigkill_mid_load_stores_each_event_once(
    telemetry: TelemetryProcess, connection: NatsClient
) -> None:
    store = StoreClient(connection)
    jetstream = connection.jetstream()
    await _wait_until_serving(store, telemetry)
    load = Load(jetstream)

    publishing = asyncio.create_task(load.run())
    await _wait_for_half_load(load, telemetry)
    telemetry.send(signal.SIGKILL)
    await asyncio.to_thread(telemetry.current.wait, STOP_TIMEOUT_S)
    published_at_kill = load.published_requests
    telemetry.start()
    await _wait_until_serving(store, telemetry)
    await publishing
    (rows, event_ids), info = await _wait_until_drained(store, jetstream, load, telemetry)

    assert 0 < published_at_kill < REQUESTS, "the kill did not land in the middle of the load"
    assert event_ids == load.events, telemetry.log_tail()
    assert rows == event_ids, telemetry.log_tail()
    assert info.num_pending == 0
    assert info.num_ack_pending == 0


async def test_sigstop_under_load_loses_nothing(telemetry: TelemetryProcess, connection: NatsClient) -> None:
    store = StoreClient(connection)
    jetstream = connection.jetstream()
    await _wait_until_serving(store, telemetry)
    load = Load(jetstream)

    publishing = asyncio.create_task(load.run())
    await _wait_for_half_load(load, telemetry)
    telemetry.send(signal.SIGSTOP)
    frozen_at = time.monotonic()
    published_at_freeze = load.published_requests
    await publishing
    await asyncio.sleep(frozen_at + FREEZE_S - time.monotonic())
    frozen = await jetstream.consumer_info(EVENTS_STREAM, TELEMETRY_CONSUMER.durable)
    telemetry.send(signal.SIGCONT)
    (rows, event_ids), info = await _wait_until_drained(store, jetstream, load, telemetry)

    assert 0 < published_at_freeze < REQUESTS, "the freeze did not begin in the middle of the load"
    assert frozen.num_pending > 0, "no backlog built up while the service was frozen"
    assert event_ids == load.events, telemetry.log_tail()
    assert rows == event_ids, telemetry.log_tail()
    assert info.num_pending == 0
    assert info.num_ack_pending == 0
