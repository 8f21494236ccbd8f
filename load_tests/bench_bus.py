"""Bus floor: round trips over a local nats-server, raw and through the layers the services use.

One process sends N sequential requests (one in flight at a time) after a
warm-up, on each path in turn:

- core request/reply with nats-py, the responder on a second connection:
  the floor of any hop;
- the same through FastStream (`broker.request` to a FastStream subscriber
  that echoes the body), as the store API is called;
- a JetStream publish that waits for the stream's ack, with nats-py;
- the same through `shared.bus.EventPublisher`, as every stage publishes its
  follow-up event (FastStream plus envelope serialisation).

The JetStream paths publish to the EVENTS stream with the topology of
`ensure_jetstream`, so the stream keeps its duplicate window and consumers.

Run alone: `python -m load_tests.bench_bus [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import nats
from faststream.message import StreamMessage
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from load_tests.latency import LatencySummary, format_us, time_sequential
from load_tests.report import BenchSection, BenchTable
from shared.bus import EventPublisher, consumer_config, ensure_jetstream, make_broker
from shared.embedded.infrastructure import free_port, start_nats
from shared.events import AcceptedPayload, ChatMessage, Envelope, EventType, RequestSpec, new_envelope
from shared.subjects import ConsumerSpec, event_subject

HOST = "127.0.0.1"

FULL_REQUESTS = 20_000
QUICK_REQUESTS = 2_000
# Enough round trips that the first request's setup (the reply inbox
# subscription, FastStream's publisher) is done before timing starts.
WARMUP_REQUESTS = 500
# A loopback round trip takes well under a millisecond, so this only turns a
# lost reply into a failed run instead of a hang.
REQUEST_TIMEOUT_S = 5.0
# A prompt of this size makes the request.accepted envelope about 0.6 kB,
# as for a short chat request.
PROMPT_CHARS = 200

# The pull rows fetch one message at a time, as a stage does under light
# load, and a full batch, as the telemetry and request-state consumers do under load.
PULL_BATCH_SIZES = (1, 64)
PULL_FETCH_TIMEOUT_S = 1.0
PULL_CONSUMER = ConsumerSpec("EVENTS", "bench-pull", event_subject(EventType.ACCEPTED))

ECHO_SUBJECT = "bench.echo.raw"
FASTSTREAM_ECHO_SUBJECT = "bench.echo.faststream"


def accepted_envelopes(count: int) -> list[Envelope]:
    """Build `count` request.accepted envelopes with distinct request and event ids."""
    prompt = ("Summarise the plot of a play about a king who divides his realm. " * 4)[:PROMPT_CHARS]
    payload = AcceptedPayload(
        request=RequestSpec(messages=[ChatMessage(role="user", content=prompt)]), prompt_chars=len(prompt)
    )
    return [
        new_envelope(EventType.ACCEPTED, request_id=str(uuid.uuid4()), tenant="bench", payload=payload)
        for _ in range(count)
    ]


async def measure_raw_request(url: str, body: bytes, count: int) -> LatencySummary:
    responder = await nats.connect(url)
    requester = await nats.connect(url)

    async def echo(message: Msg) -> None:
        await message.respond(message.data)

    try:
        await responder.subscribe(ECHO_SUBJECT, cb=echo)
        await responder.flush()
        return await time_sequential(
            lambda _index: requester.request(ECHO_SUBJECT, body, timeout=REQUEST_TIMEOUT_S), count, WARMUP_REQUESTS
        )
    finally:
        await requester.close()
        await responder.close()


def _raw_body(message: StreamMessage) -> object:
    # Echo the bytes as they came, so the figure has no JSON decoding in it.
    return message.body


async def measure_faststream_request(url: str, body: bytes, count: int) -> LatencySummary:
    responder = make_broker(url)
    requester = make_broker(url)

    @responder.subscriber(FASTSTREAM_ECHO_SUBJECT, decoder=_raw_body)
    async def echo(message_body: bytes) -> bytes:
        return message_body

    await responder.start()
    try:
        await requester.connect()
        return await time_sequential(
            lambda _index: requester.request(body, FASTSTREAM_ECHO_SUBJECT, timeout=REQUEST_TIMEOUT_S),
            count,
            WARMUP_REQUESTS,
        )
    finally:
        await requester.stop()
        await responder.stop()


async def measure_raw_jetstream(client: NatsClient, envelopes: list[Envelope], count: int) -> LatencySummary:
    jetstream = client.jetstream(timeout=REQUEST_TIMEOUT_S)
    subject = event_subject(EventType.ACCEPTED)
    bodies = [envelope.model_dump_json().encode() for envelope in envelopes]

    async def publish(index: int) -> object:
        headers = {"Nats-Msg-Id": envelopes[index].event_id}
        return await jetstream.publish(subject, bodies[index], headers=headers)

    return await time_sequential(publish, count, WARMUP_REQUESTS)


async def measure_event_publisher(url: str, envelopes: list[Envelope], count: int) -> LatencySummary:
    broker: NatsBroker = make_broker(url)
    await broker.connect()
    publisher = EventPublisher(broker)
    try:
        return await time_sequential(lambda index: publisher.publish(envelopes[index]), count, WARMUP_REQUESTS)
    finally:
        await broker.stop()


async def measure_pull(client: NatsClient, batch_size: int, count: int) -> float:
    """Return this process's CPU µs per message for fetching `count` messages `batch_size` at a time and acking each.

    The messages are those the JetStream rows published; a new durable consumer starts at the first of them.
    """
    jetstream = client.jetstream(timeout=REQUEST_TIMEOUT_S)
    await jetstream.add_consumer(PULL_CONSUMER.stream, consumer_config(PULL_CONSUMER))
    subscription = await jetstream.pull_subscribe_bind(durable=PULL_CONSUMER.durable, stream=PULL_CONSUMER.stream)
    received = 0
    started = time.process_time()
    while received < count:
        messages = await subscription.fetch(min(batch_size, count - received), timeout=PULL_FETCH_TIMEOUT_S)
        for message in messages:
            await message.ack()
        received += len(messages)
    cpu_us = (time.process_time() - started) * 1e6 / count
    await subscription.unsubscribe()
    await jetstream.delete_consumer(PULL_CONSUMER.stream, PULL_CONSUMER.durable)
    return cpu_us


async def _cpu_timed(measure: Awaitable[LatencySummary]) -> tuple[LatencySummary, float]:
    """Await `measure` and return its summary with this process's CPU µs per timed or warm-up iteration."""
    started = time.process_time()
    summary = await measure
    return summary, (time.process_time() - started) * 1e6 / (summary.samples + WARMUP_REQUESTS)


async def measure_all(url: str, count: int) -> tuple[list[tuple[str, LatencySummary, float]], list[tuple[str, float]]]:
    """Measure every path in turn against the nats-server at `url`.

    Returns the round-trip rows (path, latency, CPU µs per message) and the pull rows (path, CPU µs per message).
    """
    per_path = WARMUP_REQUESTS + count
    envelopes = accepted_envelopes(2 * per_path)
    body = envelopes[0].model_dump_json().encode()

    client = await nats.connect(url)
    try:
        await ensure_jetstream(client.jetstream())
        raw_jetstream = await _cpu_timed(measure_raw_jetstream(client, envelopes[:per_path], count))
        pulls = [
            (f"JetStream pull, fetch {size} + ack each, nats-py", await measure_pull(client, size, count))
            for size in PULL_BATCH_SIZES
        ]
    finally:
        await client.close()

    round_trips = [
        ("core request/reply, nats-py (floor)", *await _cpu_timed(measure_raw_request(url, body, count))),
        (
            "core request/reply, FastStream `broker.request`",
            *await _cpu_timed(measure_faststream_request(url, body, count)),
        ),
        ("JetStream publish + ack, nats-py", *raw_jetstream),
        (
            "JetStream publish + ack, `EventPublisher`",
            *await _cpu_timed(measure_event_publisher(url, envelopes[per_path:], count)),
        ),
    ]
    return round_trips, pulls


def summary_row(path: str, summary: LatencySummary, cpu_us: float) -> list[str]:
    p50, p99 = format_us(summary.p50_ns), format_us(summary.p99_ns)
    return [path, f"{summary.samples:,}", p50, p99, f"{summary.per_second:,.0f}", f"{cpu_us:,.0f}"]


def pull_table(pulls: list[tuple[str, float]]) -> BenchTable:
    return BenchTable(
        title="Consuming: client CPU per message",
        headers=["path", "CPU µs per message"],
        rows=[[path, f"{cpu_us:,.0f}"] for path, cpu_us in pulls],
    )


def run(quick: bool) -> BenchSection:
    """Start a nats-server in a temporary folder, time every path, stop the server."""
    count = QUICK_REQUESTS if quick else FULL_REQUESTS
    with tempfile.TemporaryDirectory(prefix="sluice-bench-bus-") as folder:
        data_dir = Path(folder)
        server = start_nats(HOST, free_port(), data_dir, data_dir / "logs")
        try:
            measured, pulls = asyncio.run(measure_all(f"nats://{HOST}:{server.port}", count))
        finally:
            server.stop()
        body_bytes = len(accepted_envelopes(1)[0].model_dump_json().encode())

    return BenchSection(
        title="Bus floor: NATS round trips",
        command="python -m load_tests.bench_bus" + (" --quick" if quick else ""),
        headers=["path", "samples", "p50 µs", "p99 µs", "requests/s", "client CPU µs per message"],
        rows=[summary_row(path, summary, cpu_us) for path, summary, cpu_us in measured],
        baseline="core request/reply with nats-py is the floor of one hop on this machine; "
        "the rows below it add FastStream and JetStream persistence.",
        notes=[
            f"{count:,} sequential round trips per path after {WARMUP_REQUESTS} untimed ones, one in flight at a time, "
            "so requests/s is 1 / mean latency, not the server's capacity.",
            "Requester and responder share one Python process and event loop, on separate connections "
            "to a nats-server started for this run on 127.0.0.1.",
            f"Every message is a request.accepted envelope of about {body_bytes} bytes. JetStream rows publish "
            "to the EVENTS stream (file storage) with a Nats-Msg-Id header, as the services do.",
            "A JetStream publish can be faster than a core request/reply: nats-server sends the ack itself, "
            "while a request/reply also passes through the Python responder's callback.",
            "Client CPU is this process's user plus system time over the timed and warm-up iterations; for "
            "request/reply it includes the responder, which runs in the same process. nats-server's CPU is not in it.",
            f"The pull rows read {count:,} of the messages the JetStream rows published, through a new durable "
            "pull consumer, and ack each one, as the services' pullers do.",
        ],
        tables=[pull_table(pulls)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_bus", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_REQUESTS:,} requests per path instead of {FULL_REQUESTS:,}"
    )
    print(run(quick=parser.parse_args().quick).to_markdown())


if __name__ == "__main__":
    main()
