"""The app's health check, with and without NATS."""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.nats, pytest.mark.redis]


async def test_health_ok_without_key(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "nats": "ok", "redis": "ok"}


async def test_health_names_unreachable_nats(outage_http: httpx.AsyncClient) -> None:
    response = await outage_http.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "nats": "unreachable", "redis": "ok"}
