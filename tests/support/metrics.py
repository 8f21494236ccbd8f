"""Reading a service's Prometheus metrics in tests: scrape an endpoint, or render a registry, then look up one sample."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 5.0
# The pause between two scrapes of `scrape_when`.
POLL_INTERVAL_S = 0.05


async def scrape(port: int, host: str = "127.0.0.1") -> str:
    """Return the text of `http://HOST:PORT/metrics`. Raises `httpx.HTTPStatusError` for a status other than 2xx."""
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S) as client:
        response = await client.get(f"http://{host}:{port}/metrics")
    response.raise_for_status()
    return response.text


def render(registry: CollectorRegistry) -> str:
    """Return the registry's metrics in the Prometheus text format, as a scrape would."""
    return generate_latest(registry).decode()


def sample_value(exposition: str, name: str, **labels: str) -> float | None:
    """Return the value of the sample `name` whose labels include `labels`, or None when there is none.

    `name` is the sample's full name, such as `sluice_inference_ttft_seconds_count`.
    """
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return None


async def scrape_when(port: int, name: str, value: float, wait_s: float, **labels: str) -> str:
    """Scrape until the sample `name` with `labels` has `value`, and return that scrape.

    A service records some metrics just after it publishes the event a test
    waits for, so one scrape right after the event may come too early.
    Returns the last scrape when `wait_s` seconds pass first, for the test's
    asserts to report.
    """
    deadline = time.monotonic() + wait_s
    while True:
        exposition = await scrape(port)
        if sample_value(exposition, name, **labels) == value or time.monotonic() > deadline:
            return exposition
        await asyncio.sleep(POLL_INTERVAL_S)
