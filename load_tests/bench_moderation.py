"""Streaming moderation's delay: from a chunk's publish on CHUNKS to its text's append to the release log.

The moderation service runs as its own process against a real nats-server
and redis-server, as in the embedded stack. This process plays the
inference service: it publishes a scripted chunk stream per request at a
fixed interval, and reads the request's release log from Redis with a
blocking XREAD, as the ingress does for a WebSocket client. Each release is
timed against the chunk whose arrival made that text releasable (the
processing delay), and the first release also against the first chunk (what
moderation adds to time to first token, holdback included).

Each policy runs on a fresh nats-server, redis-server and moderation
process, so one policy's KV entry and backlog never reach the next.

Run alone: `python -m load_tests.bench_moderation [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import numpy as np
import psutil
import redis.asyncio as redis
import yaml
from nats.js import JetStreamContext

from load_tests.report import BenchSection
from shared.bus import ensure_jetstream
from shared.embedded.infrastructure import die_with_parent, free_port, start_nats, start_redis
from shared.events import ChunkPayload, EndPayload, Envelope, EventType, Usage, derive_event_id, utc_now
from shared.release_log import ReleaseLog
from shared.scanning import load_policy
from shared.settings import DEFAULT_CONFIG_DIR, REPO_ROOT
from shared.subjects import chunk_subject

COMMAND = "python -m load_tests.bench_moderation"
TITLE = "Moderation: delay added to the stream"
HEADERS = [
    "policy",
    "stream",
    "max holdback chars",
    "first text after first chunk p50 ms",
    "p99 ms",
    "first release after its chunk p50 ms",
    "p99 ms",
    "later releases after their chunk p50 ms",
    "p99 ms",
    "moderation CPU ms per chunk",
]
TARGET_P99_MS = 20.0

SHIPPED_POLICY = DEFAULT_CONFIG_DIR / "policy.yaml"
# The baseline: moderation's relay (NATS in, Redis out) with no output scanner and no holdback.
EMPTY_POLICY: dict[str, object] = {"input": [], "output": []}
TENANT = "bench"

FULL_STREAMS = 100
QUICK_STREAMS = 10
CHUNKS_PER_STREAM = 16
# The inference service publishes at most one chunk per 20 ms
# (`services.inference.coalescing.DEFAULT_CHUNK_INTERVAL_S`).
CHUNK_INTERVAL_S = 0.02
# The moderation process imports llm-guard (about 6 s on 2 cores) before it takes work.
READY_TIMEOUT_S = 90.0
# One stream's releases must all arrive within this long after its last chunk.
STREAM_TIMEOUT_S = 30.0
# The moderation process gets this long to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0
READ_BLOCK_MS = 1_000
MS_PER_S = 1_000.0


@dataclass(frozen=True)
class StreamShape:
    """A scripted output: `CHUNKS_PER_STREAM` chunks of `chunk_text`, one per `CHUNK_INTERVAL_S`."""

    name: str
    chunk_text: str


# A 40-character chunk is more text than the shipped holdback, so every chunk
# releases text: the rows time moderation's processing alone. One 4-character
# token per chunk is a backend streaming 50 tokens/s, where a fixed holdback
# would delay the first release by several chunks.
SHAPES = (
    StreamShape("40 chars per chunk", "The quick brown fox jumps over the dog. "),
    StreamShape("1 token (4 chars) per chunk", "word"),
)


@dataclass
class StreamTiming:
    """Publish times of one stream's chunks and receipt times of its releases, on `time.perf_counter`."""

    chunk_sent_s: list[float]
    chunk_ends: list[int]
    end_sent_s: float = 0.0
    # (receipt time, end offset of the released text in the output) per release.
    releases: list[tuple[float, int]] | None = None


def _envelope(request_id: str, event_type: EventType, payload: ChunkPayload | EndPayload, seq: int = 0) -> Envelope:
    return Envelope(
        event_id=derive_event_id(TENANT, request_id, event_type, 1, seq),
        type=event_type,
        request_id=request_id,
        tenant=TENANT,
        ts=utc_now(),
        payload=payload.model_dump(mode="json"),
    )


async def _publish(jetstream: JetStreamContext, envelope: Envelope) -> None:
    headers = {"Nats-Msg-Id": envelope.event_id}
    await jetstream.publish(chunk_subject(envelope.request_id), envelope.model_dump_json().encode(), headers=headers)


async def _read_releases(release_log: ReleaseLog, request_id: str) -> list[tuple[float, int]]:
    """Return the receipt time and end offset of every released chunk, up to the final entry."""
    releases: list[tuple[float, int]] = []
    released_chars = 0
    last_id = "0-0"
    deadline = time.monotonic() + STREAM_TIMEOUT_S + CHUNKS_PER_STREAM * CHUNK_INTERVAL_S
    while time.monotonic() < deadline:
        for entry in await release_log.read(TENANT, request_id, after_entry_id=last_id, block_ms=READ_BLOCK_MS):
            received_s = time.perf_counter()
            last_id = entry.entry_id
            if entry.is_final:
                return releases
            released_chars += len(str(entry.data["text"]))
            releases.append((received_s, released_chars))
    raise TimeoutError(f"request {request_id}: the release log had no final entry after {STREAM_TIMEOUT_S} s")


async def run_stream(jetstream: JetStreamContext, release_log: ReleaseLog, shape: StreamShape) -> StreamTiming:
    """Publish one scripted stream at `CHUNK_INTERVAL_S` while reading its release log."""
    request_id = str(uuid.uuid4())
    reader = asyncio.create_task(_read_releases(release_log, request_id))
    timing = StreamTiming(chunk_sent_s=[], chunk_ends=[])
    for seq in range(CHUNKS_PER_STREAM):
        timing.chunk_sent_s.append(time.perf_counter())
        timing.chunk_ends.append((seq + 1) * len(shape.chunk_text))
        await _publish(jetstream, _envelope(request_id, EventType.CHUNK, ChunkPayload(attempt=1, seq=seq, text=shape.chunk_text), seq))
        await asyncio.sleep(CHUNK_INTERVAL_S)
    timing.end_sent_s = time.perf_counter()
    end = EndPayload(attempt=1, finish_reason="length", usage=Usage(completion_tokens=CHUNKS_PER_STREAM))
    await _publish(jetstream, _envelope(request_id, EventType.END, end))
    timing.releases = await reader
    return timing


def trigger_time(timing: StreamTiming, released_end: int, release_ends: list[int]) -> float:
    """Return when the message that made text up to `released_end` releasable was published.

    `release_ends[j]` is how far the output may be released after chunk j.
    A release that no chunk explains is the tail, released by the end message.
    """
    for sent_s, release_end in zip(timing.chunk_sent_s, release_ends):
        if release_end == released_end:
            return sent_s
    return timing.end_sent_s


def expected_release_ends(policy_file: Path, shape: StreamShape) -> list[int]:
    """Return how far moderation may release a stream of `shape` after each chunk, by running its check here."""
    from services.moderation.holdback import OutputScanners
    from services.moderation.stream import OutputStream

    holdback = OutputScanners.from_policy(load_policy(policy_file)).holdback
    stream = OutputStream(TENANT, "replay", attempt=1)
    ends = []
    for seq in range(CHUNKS_PER_STREAM):
        stream.accept(seq, shape.chunk_text)
        asyncio.run(holdback.check(stream))
        stream.mark_released(holdback.releasable(stream))
        ends.append(stream.released_chars)
    return ends


@dataclass(frozen=True)
class Delays:
    """Per-stream delays in milliseconds."""

    first_text_ms: list[float]
    first_release_ms: list[float]
    later_release_ms: list[float]


def delays_of(timings: list[StreamTiming], release_ends: list[int]) -> Delays:
    first_text, first_release, later = [], [], []
    for timing in timings:
        releases = timing.releases or []
        if not releases:
            continue
        first_text.append((releases[0][0] - timing.chunk_sent_s[0]) * MS_PER_S)
        for index, (received_s, released_end) in enumerate(releases):
            delay_ms = (received_s - trigger_time(timing, released_end, release_ends)) * MS_PER_S
            (first_release if index == 0 else later).append(delay_ms)
    return Delays(first_text, first_release, later)


def _percentiles(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    p50, p99 = np.percentile(np.asarray(values), [50.0, 99.0])
    return f"{p50:.2f}", f"{p99:.2f}"


class ModerationProcess:
    """nats-server, redis-server and the moderation service on free loopback ports, for one policy file."""

    def __init__(self, folder: Path, policy_file: Path) -> None:
        self.folder = folder
        self.policy_file = policy_file
        self.nats_url = ""
        self.redis_url = ""
        self.service: psutil.Popen | None = None

    @contextmanager
    def running(self) -> Iterator[ModerationProcess]:
        log_dir = self.folder / "logs"
        nats_port, redis_port = free_port(), free_port()
        servers = [
            start_nats("127.0.0.1", nats_port, self.folder, log_dir),
            start_redis("127.0.0.1", redis_port, self.folder, log_dir),
        ]
        self.nats_url, self.redis_url = f"nats://127.0.0.1:{nats_port}", f"redis://127.0.0.1:{redis_port}/0"
        try:
            self.service = self._spawn_service(log_dir / "moderation.log")
            yield self
        finally:
            self._stop_service()
            for server in servers:
                server.process.terminate()
                server.process.wait(timeout=STOP_TIMEOUT_S)

    def _spawn_service(self, log_path: Path) -> psutil.Popen:
        env = dict(os.environ)
        env.update(
            {
                "SLUICE_NATS_URL": self.nats_url,
                "SLUICE_REDIS_URL": self.redis_url,
                "SLUICE_POLICY_FILE": str(self.policy_file),
                "SLUICE_DATA_DIR": str(self.folder),
                "SLUICE_LOG_LEVEL": "WARNING",
                "HF_HUB_OFFLINE": "1",
            }
        )
        with log_path.open("ab") as log_file:
            return psutil.Popen(
                [sys.executable, "-m", "services.moderation"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )

    def _stop_service(self) -> None:
        if self.service is None or self.service.poll() is not None:
            return
        self.service.terminate()
        try:
            self.service.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.service.kill()
            self.service.wait()

    def cpu_s(self) -> float:
        """Return the CPU seconds the moderation process has used so far."""
        if self.service is None:
            return 0.0
        times = self.service.cpu_times()
        return float(times.user + times.system)


async def measure_policy(
    process: ModerationProcess, shape: StreamShape, streams: int, release_ends: list[int]
) -> tuple[Delays, float]:
    """Run `streams` scripted streams one after another; return their delays and the CPU ms per chunk message."""
    connection = await nats.connect(process.nats_url)
    client = redis.from_url(process.redis_url)
    try:
        jetstream = connection.jetstream()
        await ensure_jetstream(jetstream)
        release_log = ReleaseLog(client, ttl_s=3600)
        # The first stream waits for the service to start and warms it up; it is not timed.
        await asyncio.wait_for(run_stream(jetstream, release_log, shape), READY_TIMEOUT_S)
        cpu_before_s = process.cpu_s()
        timings = [await run_stream(jetstream, release_log, shape) for _ in range(streams)]
        cpu_ms_per_chunk = (process.cpu_s() - cpu_before_s) * MS_PER_S / (streams * (CHUNKS_PER_STREAM + 1))
    finally:
        await client.aclose()
        await connection.close()
    return delays_of(timings, release_ends), cpu_ms_per_chunk


def _holdback_chars(policy_file: Path) -> int:
    from services.moderation.holdback import OutputScanners

    return OutputScanners.from_policy(load_policy(policy_file)).holdback.holdback_chars


def measure(policy_name: str, policy_file: Path, streams: int, folder: Path) -> list[list[str]]:
    """Return one table row per stream shape for the policy in `policy_file`."""
    holdback_chars = _holdback_chars(policy_file)
    rows = []
    for shape in SHAPES:
        run_folder = Path(tempfile.mkdtemp(dir=folder))
        with ModerationProcess(run_folder, policy_file).running() as process:
            release_ends = expected_release_ends(policy_file, shape)
            delays, cpu_ms = asyncio.run(measure_policy(process, shape, streams, release_ends))
        rows.append(
            [
                policy_name,
                shape.name,
                str(holdback_chars),
                *_percentiles(delays.first_text_ms),
                *_percentiles(delays.first_release_ms),
                *_percentiles(delays.later_release_ms),
                f"{cpu_ms:.2f}",
            ]
        )
    return rows


def first_release_notes(policy_file: Path) -> list[str]:
    """Return, per stream shape, which chunk first releases text and how long that waits for the model."""
    notes = []
    for shape in SHAPES:
        release_ends = expected_release_ends(policy_file, shape)
        first_chunk = next((seq for seq, end in enumerate(release_ends) if end > 0), len(release_ends))
        wait_ms = first_chunk * CHUNK_INTERVAL_S * MS_PER_S
        notes.append(
            f"{shape.name}: the first release comes after chunk {first_chunk} (counting from 0), so it waits "
            f"{wait_ms:.0f} ms for text before any processing. The held tail is the text where a banned "
            "pattern could still begin, at most the holdback."
        )
    return notes


def run(quick: bool) -> BenchSection:
    """Measure the shipped policy and the no-scanner baseline on every stream shape."""
    command = COMMAND + (" --quick" if quick else "")
    streams = QUICK_STREAMS if quick else FULL_STREAMS
    with tempfile.TemporaryDirectory(prefix="bench-moderation-") as temporary:
        folder = Path(temporary)
        empty_policy = folder / "empty-policy.yaml"
        empty_policy.write_text(yaml.safe_dump(EMPTY_POLICY))
        rows = measure("shipped (`shared/config/policy.yaml`)", SHIPPED_POLICY, streams, folder)
        rows += measure("no output scanners (baseline)", empty_policy, streams, folder)

    return BenchSection(
        title=TITLE,
        command=command,
        headers=list(HEADERS),
        rows=rows,
        baseline="the same streams through moderation with no output scanner and no holdback, in the same run.",
        notes=[
            f"{streams} streams per row, one after another, after one untimed stream; each has {CHUNKS_PER_STREAM} "
            f"chunks published {CHUNK_INTERVAL_S * MS_PER_S:.0f} ms apart, then the end message.",
            "First text after first chunk: from the publish of chunk 0 to the receipt of the first released text. "
            "It is what moderation adds to time to first token, the holdback wait included: a client without "
            "moderation would receive chunk 0 itself.",
            "Release after its chunk: from the publish of the chunk (or end message) that made the text "
            "releasable to its receipt through XREAD. It is moderation's processing alone: JetStream delivery, "
            "the streaming scan, the Redis append and the read.",
            f"Target: streaming moderation adds p99 <= {TARGET_P99_MS:.0f} ms to time to first token.",
            "CPU per chunk is the moderation process's CPU time over the timed streams divided by the chunk "
            "and end messages it handled.",
            *first_release_notes(SHIPPED_POLICY),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STREAMS} streams per row instead of {FULL_STREAMS}")
    print(run(quick=parser.parse_args().quick).to_markdown())


if __name__ == "__main__":
    main()
