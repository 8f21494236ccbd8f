"""Replaying a JSONL file of prompts through the running stack and measuring latency at the client."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.cli.client import ApiError, SluiceClient
from shared.summary import LatencyPercentiles, TrafficSummary


class PromptFileError(ValueError):
    """The prompts file is missing or a line is not a JSON object with a `text` string."""


@dataclass(frozen=True)
class Outcome:
    """The outcome of one replayed prompt, with latencies in milliseconds from its POST."""

    status: str
    blocked_by: str | None = None
    error_code: str | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None


def load_prompts(path: Path, limit: int | None) -> list[str]:
    """Read the `text` field of each line, in file order, up to `limit` lines."""
    if not path.is_file():
        raise PromptFileError(f"prompts file {path} not found")
    prompts: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            prompts.append(_prompt_text(line, path, number))
            if limit is not None and len(prompts) >= limit:
                break
    return prompts


def _prompt_text(line: str, path: Path, number: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{path}:{number} is not valid JSON: {error.msg}") from error
    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
        raise PromptFileError(f'{path}:{number} needs a "text" string field, as in {{"text": "...", "label": "benign"}}')
    return row["text"]


async def replay_one(client: SluiceClient, prompt: str, max_new_tokens: int) -> Outcome:
    """Submit one prompt, follow its stream to the final message and time both ends."""
    started = time.monotonic()
    try:
        submission = await client.submit({"prompt": prompt, "params": {"max_new_tokens": max_new_tokens}})
    except ApiError as error:
        return Outcome("rejected", blocked_by=f"HTTP {error.status_code}")
    first_chunk_at: float | None = None
    final: dict = {}
    async for message in client.stream(submission.stream_url):
        if message["type"] == "chunk" and first_chunk_at is None:
            first_chunk_at = time.monotonic()
        if message["type"] == "final":
            final = message
    finished = time.monotonic()
    ttft_ms = (first_chunk_at - started) * 1000 if first_chunk_at is not None else None
    return Outcome(
        final.get("status", "failed"),
        blocked_by=final.get("blocked_by"),
        error_code=final.get("error_code"),
        ttft_ms=ttft_ms,
        total_ms=(finished - started) * 1000,
    )


async def replay(
    client: SluiceClient,
    prompts: list[str],
    *,
    concurrency: int,
    max_new_tokens: int,
    on_done: Callable[[Outcome], None],
) -> list[Outcome]:
    """Replay every prompt with at most `concurrency` in flight; `on_done` runs as each one ends."""
    limiter = asyncio.Semaphore(concurrency)

    async def run(prompt: str) -> Outcome:
        async with limiter:
            outcome = await replay_one(client, prompt, max_new_tokens)
        on_done(outcome)
        return outcome

    return list(await asyncio.gather(*(run(prompt) for prompt in prompts)))


def percentiles(samples: list[float]) -> LatencyPercentiles:
    if not samples:
        return LatencyPercentiles()
    p50, p95 = np.percentile(samples, [50, 95])
    return LatencyPercentiles(p50_ms=float(p50), p95_ms=float(p95), samples=len(samples))


def summarize(outcomes: list[Outcome]) -> TrafficSummary:
    """Fold client-side outcomes into the same summary `sluice report` reads from ClickHouse."""
    statuses = Counter(outcome.status for outcome in outcomes)
    blocked = Counter(outcome.blocked_by or "unknown" for outcome in outcomes if outcome.status in ("blocked", "rejected"))
    failed = Counter(outcome.error_code or "unknown" for outcome in outcomes if outcome.status == "failed")
    return TrafficSummary(
        requests=len(outcomes),
        completed=statuses["completed"],
        blocked_by=dict(blocked),
        failed=statuses["failed"],
        failed_by=dict(failed),
        expired=statuses["expired"],
        ttft=percentiles([o.ttft_ms for o in outcomes if o.ttft_ms is not None]),
        total_latency=percentiles([o.total_ms for o in outcomes if o.total_ms is not None and o.status == "completed"]),
    )
