"""API key authentication."""

from __future__ import annotations

import pytest

from shared.api_keys import hash_key

from services.ingress.auth import ApiKeyAuthenticator
from services.ingress.errors import AuthenticationError

KEY = "sk-sluice-test-key"


@pytest.fixture
def authenticator() -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator({hash_key(KEY): "acme"})


def test_known_key_maps_to_tenant(authenticator: ApiKeyAuthenticator) -> None:
    assert authenticator.tenant_for(f"Bearer {KEY}") == "acme"


def test_scheme_is_case_insensitive(authenticator: ApiKeyAuthenticator) -> None:
    assert authenticator.tenant_for(f"bearer {KEY}") == "acme"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        (f"Basic {KEY}", "malformed Authorization header"),
        ("Bearer ", "malformed Authorization header"),
        ("Bearer sk-sluice-other", "invalid API key"),
    ],
)
def test_bad_header_raises_clear_error(authenticator: ApiKeyAuthenticator, header: str | None, message: str) -> None:
    with pytest.raises(AuthenticationError, match=message) as raised:
        authenticator.tenant_for(header)

    assert raised.value.status_code == 401


def test_error_never_echoes_key(authenticator: ApiKeyAuthenticator) -> None:
    with pytest.raises(AuthenticationError) as raised:
        authenticator.tenant_for("Bearer sk-sluice-secret-value")

    assert "sk-sluice-secret-value" not in raised.value.message
