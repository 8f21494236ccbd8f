"""Keys created and revoked with `sluice keys` take effect in a running ingress without a restart."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.ingress.support import ApiKeys, bearer
from tests.support.keys_cli import create_key, run_keys

pytestmark = [pytest.mark.nats, pytest.mark.redis]

# The watch delivers a change within milliseconds; the limit only stops a broken watch from hanging the test.
PROPAGATION_TIMEOUT_S = 5.0


def status_until(http: httpx.Client, key: str, expected: int) -> int:
    """Poll an authenticated read until it returns `expected`; return the last status code."""
    path = f"/v1/requests/{uuid.uuid4().hex}"
    deadline = time.monotonic() + PROPAGATION_TIMEOUT_S
    while True:
        status_code = http.get(path, headers=bearer(key)).status_code
        if status_code == expected or time.monotonic() > deadline:
            return status_code
        time.sleep(0.02)


def test_new_key_accepted_without_restart(ingress: str, ingress_nats_url: str) -> None:
    key = create_key(ingress_nats_url, f"watch-{uuid.uuid4().hex[:8]}")

    with httpx.Client(base_url=ingress, timeout=10.0) as http:
        # 404: the key was accepted and the request id is unknown.
        assert status_until(http, key.plain_key, 404) == 404


def test_revoked_key_gets_401_without_restart(ingress: str, ingress_nats_url: str, api_keys: ApiKeys) -> None:
    key = create_key(ingress_nats_url, f"watch-{uuid.uuid4().hex[:8]}")

    with httpx.Client(base_url=ingress, timeout=10.0) as http:
        assert status_until(http, key.plain_key, 404) == 404
        exit_code, _output = run_keys(ingress_nats_url, "revoke", key.key_id)
        assert exit_code == 0

        assert status_until(http, key.plain_key, 401) == 401
        response = http.get(f"/v1/requests/{uuid.uuid4().hex}", headers=bearer(key.plain_key))
        other = http.get(f"/v1/requests/{uuid.uuid4().hex}", headers=bearer(api_keys.acme))

    assert f"API key {key.key_id} was revoked" in response.json()["error"]["message"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert other.status_code == 404


def test_file_keys_seeded_into_bucket(ingress: str, ingress_nats_url: str, api_keys: ApiKeys) -> None:
    exit_code, output = run_keys(ingress_nats_url, "list", "--tenant", "acme")

    assert exit_code == 0
    assert f"from {api_keys.path.name}" in output
