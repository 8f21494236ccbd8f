"""A backend's endpoints in backends.yaml: `url` or `endpoints`, the pool's limits, and the error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inference.backends import single_endpoint_url
from services.inference.openai_compatible import OpenAICompatibleBackend
from services.inference.tgi import TgiBackend
from shared.experiments import (
    DEFAULT_BREAKER_FAILURE_THRESHOLD,
    DEFAULT_BREAKER_OPEN_S,
    DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT,
    BackendConfig,
    ConfigError,
    load_backends,
)

FIRST = "http://10.0.0.1:8080"
SECOND = "http://10.0.0.2:8080"


def _load_error(tmp_path: Path, backend_yaml: str) -> str:
    """Load a backends file with one backend `b` and return the `ConfigError` message. Fails the test when loading succeeds."""
    path = tmp_path / "backends.yaml"
    path.write_text(f"backends:\n  b: {backend_yaml}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_backends(path, {})
    return str(caught.value)


def test_url_is_one_endpoint() -> None:
    config = BackendConfig(kind="tgi", url=FIRST)

    assert config.endpoint_urls == [FIRST]
    assert config.max_in_flight == DEFAULT_MAX_IN_FLIGHT_PER_ENDPOINT


def test_endpoints_form_pool(tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(
        f"backends:\n  gpu: {{kind: tgi, endpoints: ['{FIRST}', '{SECOND}'], max_in_flight_per_endpoint: 3}}\n",
        encoding="utf-8",
    )

    config = load_backends(path, {})["gpu"]

    assert config.url is None
    assert config.endpoint_urls == [FIRST, SECOND]
    assert config.max_in_flight_per_endpoint == 3
    assert config.max_in_flight == 6


def test_breaker_defaults() -> None:
    config = BackendConfig(kind="tgi", url=FIRST)

    assert config.breaker_failure_threshold == DEFAULT_BREAKER_FAILURE_THRESHOLD
    assert config.breaker_open_s == DEFAULT_BREAKER_OPEN_S


def test_url_and_endpoints_rejected(tmp_path: Path) -> None:
    message = _load_error(tmp_path, f"{{kind: tgi, url: '{FIRST}', endpoints: ['{SECOND}']}}")

    assert "backends.b" in message
    assert "set either url (one endpoint) or endpoints (a pool), not both" in message


def test_neither_url_nor_endpoints_rejected(tmp_path: Path) -> None:
    message = _load_error(tmp_path, "{kind: tgi}")

    assert "backends.b" in message
    assert "missing endpoint: set url to one server's URL or endpoints to a list of URLs" in message


def test_empty_endpoints_rejected(tmp_path: Path) -> None:
    message = _load_error(tmp_path, "{kind: tgi, endpoints: []}")

    assert "backends.b.endpoints" in message
    assert "at least 1 item" in message


def test_endpoint_not_http_rejected(tmp_path: Path) -> None:
    message = _load_error(tmp_path, f"{{kind: tgi, endpoints: ['{FIRST}', 'models.internal:8080']}}")

    assert "backends.b.endpoints.1 = 'models.internal:8080'" in message


def test_duplicate_endpoint_rejected(tmp_path: Path) -> None:
    message = _load_error(tmp_path, f"{{kind: tgi, endpoints: ['{FIRST}', '{FIRST}']}}")

    assert f"endpoint '{FIRST}' appears more than once" in message


@pytest.mark.parametrize("field", ["max_in_flight_per_endpoint", "breaker_failure_threshold", "breaker_open_s"])
def test_pool_limit_must_be_positive(tmp_path: Path, field: str) -> None:
    message = _load_error(tmp_path, f"{{kind: tgi, url: '{FIRST}', {field}: 0}}")

    assert f"backends.b.{field} = 0" in message
    assert "greater than 0" in message


def test_for_endpoint_keeps_settings() -> None:
    config = BackendConfig(kind="openai", endpoints=[FIRST, SECOND], model="m", token_timeout_s=7)

    single = config.for_endpoint(SECOND)

    assert single.url == SECOND
    assert single.endpoints is None
    assert single.endpoint_urls == [SECOND]
    assert single.model == "m"
    assert single.token_timeout_s == 7


def test_for_endpoint_unknown_url_rejected() -> None:
    config = BackendConfig(kind="tgi", endpoints=[FIRST])

    with pytest.raises(ValueError, match="is not an endpoint of this backend"):
        config.for_endpoint(SECOND)


@pytest.mark.parametrize("client", [TgiBackend, OpenAICompatibleBackend])
def test_client_rejects_pool_config(client: type) -> None:
    config = BackendConfig(kind="tgi", endpoints=[FIRST, SECOND])

    with pytest.raises(ValueError, match="backend b lists 2 endpoints, but a client calls one"):
        client("b", config)


def test_single_endpoint_url_of_url_config() -> None:
    assert single_endpoint_url("b", BackendConfig(kind="tgi", url=FIRST)) == FIRST
