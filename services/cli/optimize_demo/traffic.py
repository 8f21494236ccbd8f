"""Simulated users of the demonstration's experiment: one held-out prompt each, graded, with feedback over the API.

Each unit is one user who sends one held-out prompt through `POST
/v1/requests` and reads the output from the stream. The task metric grades
the output against the expected completion. A correct output gets a
conversion of 1 and an incorrect one a conversion of 0. The thumbs
feedback follows the grade, but with chance `THUMBS_NOISE` it is flipped,
as real users misjudge some answers.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from services.cli.client import SluiceClient
from services.modelops.heldout import METRICS
from shared.events import FeedbackKind

T = TypeVar("T")

# Requests in flight at once: enough to keep both model servers busy (each
# runs 4 generations at once) without queueing most requests in JetStream.
CONCURRENCY = 8
# The chance that a user's thumbs disagrees with the grade.
THUMBS_NOISE = 0.1
# Telemetry stores a batch about a second after its events. The limit only
# stops a broken stack from hanging the demonstration.
STORE_WAIT_S = 120.0
STORE_POLL_INTERVAL_S = 1.0


class TrafficError(RuntimeError):
    """The stack did not store the simulated traffic in time. The message names what is missing."""


@dataclass
class UnitResult:
    """One unit's request: what it sent and expected, and what the stack returned."""

    user_id: str
    prompt: str
    expected: str
    request_id: str = ""
    status: str = ""
    variant: str | None = None
    # The scanner that blocked the prompt or the output, when one did.
    blocked_by: str | None = None
    output: str = ""
    correct: bool = False


def plan_units(examples: Sequence[dict[str, str]], count: int, rng: random.Random, prefix: str) -> list[UnitResult]:
    """Return `count` units named `prefix`-NNNN, each with a held-out example drawn without replacement by `rng`.

    Raises `ValueError` when `count` exceeds the number of examples.
    """
    if count > len(examples):
        raise ValueError(f"{count} units need {count} held-out examples, but the file has {len(examples)}; pass fewer units")
    drawn = rng.sample(list(examples), count)
    return [UnitResult(f"{prefix}-{index:04d}", example["prompt"], example["completion"]) for index, example in enumerate(drawn)]


async def run_units(client: SluiceClient, units: list[UnitResult], metric: str, on_done: Callable[[UnitResult], None]) -> None:
    """Send every unit's request, read its stream to the end, and grade the released text with `metric`."""
    check = METRICS[metric]

    async def run(unit: UnitResult) -> None:
        submission = await client.submit({"prompt": unit.prompt, "user_id": unit.user_id})
        unit.request_id = submission.request_id
        async for _message in client.stream(submission.stream_url):
            pass
        status = await client.status(submission.request_id)
        unit.status = status["status"]
        unit.variant = (status.get("variant") or {}).get("variant_key")
        unit.blocked_by = status.get("blocked_by")
        unit.output = status.get("text") or ""
        unit.correct = unit.status == "completed" and check(unit.output, unit.expected)
        on_done(unit)

    await gather_limited(CONCURRENCY, [lambda unit=unit: run(unit) for unit in units])


async def gather_limited(concurrency: int, jobs: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the jobs, at most `concurrency` at a time, and return their results in job order."""
    limiter = asyncio.Semaphore(concurrency)

    async def limited(job: Callable[[], Awaitable[T]]) -> T:
        async with limiter:
            return await job()

    return list(await asyncio.gather(*(limited(job) for job in jobs)))


def feedback_bodies(units: Sequence[UnitResult], rng: random.Random) -> list[dict[str, Any]]:
    """Return a conversion and a thumbs body for each completed unit, the thumbs flipped with chance `THUMBS_NOISE`."""
    bodies = []
    for unit in units:
        if unit.status != "completed":
            continue
        grade = int(unit.correct)
        thumbs = 1 - grade if rng.random() < THUMBS_NOISE else grade
        bodies.append({"request_id": unit.request_id, "kind": FeedbackKind.CONVERSION.value, "value": grade})
        bodies.append({"request_id": unit.request_id, "kind": FeedbackKind.THUMBS.value, "value": thumbs})
    return bodies


async def send_feedback(client: SluiceClient, bodies: Sequence[dict[str, Any]]) -> None:
    """POST every body. The idempotency key is the request id and the kind, because each request gets one body of each kind."""
    jobs = [lambda body=body: client.feedback(body, f"{body['request_id']}:{body['kind']}") for body in bodies]
    await gather_limited(CONCURRENCY, jobs)


async def wait_for_rows(client: SluiceClient, sql: str, parameters: dict[str, Any], expected: int, what: str) -> int:
    """Poll a count query until it reaches `expected`. Raises `TrafficError` after `STORE_WAIT_S` seconds."""
    deadline = time.monotonic() + STORE_WAIT_S
    while True:
        count = int((await client.query(sql, parameters))["rows"][0][0])
        if count >= expected:
            return count
        if time.monotonic() > deadline:
            raise TrafficError(f"the store has {count} of {expected} {what} after {STORE_WAIT_S} s; see the stack's logs")
        await asyncio.sleep(STORE_POLL_INTERVAL_S)


async def wait_for_requests(client: SluiceClient, request_ids: list[str]) -> int:
    """Wait until ClickHouse has the `request.accepted` row of every request, which feedback needs."""
    sql = "SELECT uniqExact(request_id) FROM events WHERE type = 'request.accepted' AND has({ids:Array(String)}, request_id)"
    return await wait_for_rows(client, sql, {"ids": request_ids}, len(request_ids), "accepted requests")


async def wait_for_experiment_rows(client: SluiceClient, experiment: str, request_ids: list[str], exposures: int, feedback: int) -> None:
    """Wait until the store has `exposures` exposures of `experiment` and `feedback` feedback rows on `request_ids`."""
    exposure_sql = "SELECT uniqExact(event_id) FROM exposures WHERE experiment_key = {experiment:String}"
    await wait_for_rows(client, exposure_sql, {"experiment": experiment}, exposures, "exposures")
    feedback_sql = "SELECT uniqExact(event_id) FROM feedback WHERE has({ids:Array(String)}, request_id)"
    await wait_for_rows(client, feedback_sql, {"ids": request_ids}, feedback, "feedback rows")

