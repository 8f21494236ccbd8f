"""API key authentication."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.api_keys import ApiKeyRecord, hash_key, key_id_for

from services.ingress.auth import ApiKeyAuthenticator
from services.ingress.errors import AuthenticationError

KEY = "sk-sluice-test-key"
CREATED_AT = datetime(2025, 1, 1, tzinfo=UTC)


def record_of(key: str, tenant: str, **fields: object) -> ApiKeyRecord:
    digest = hash_key(key)
    return ApiKeyRecord(key_id=key_id_for(digest), tenant=tenant, sha256=digest, created_at=CREATED_AT, **fields)


@pytest.fixture
def authenticator() -> ApiKeyAuthenticator:
    return ApiKeyAuthenticator([record_of(KEY, "acme")])


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


def test_authenticate_returns_record(authenticator: ApiKeyAuthenticator) -> None:
    record = authenticator.authenticate(f"Bearer {KEY}")

    assert record.key_id == key_id_for(hash_key(KEY))
    assert record.tenant == "acme"


def test_revoked_key_rejected(authenticator: ApiKeyAuthenticator) -> None:
    revoked = record_of(KEY, "acme", revoked_at=datetime(2025, 2, 3, 4, 5, tzinfo=UTC))
    authenticator.put(revoked.key_id, revoked)

    with pytest.raises(AuthenticationError, match="revoked at 2025-02-03 04:05:00 UTC") as raised:
        authenticator.tenant_for(f"Bearer {KEY}")

    assert raised.value.status_code == 401


def test_removed_key_rejected(authenticator: ApiKeyAuthenticator) -> None:
    authenticator.remove(key_id_for(hash_key(KEY)))

    with pytest.raises(AuthenticationError, match="invalid API key"):
        authenticator.tenant_for(f"Bearer {KEY}")


def test_put_replaces_record_of_same_id(authenticator: ApiKeyAuthenticator) -> None:
    limited = record_of(KEY, "acme", requests_per_minute=5)

    authenticator.put(limited.key_id, limited)

    assert authenticator.authenticate(f"Bearer {KEY}").requests_per_minute == 5


def test_other_keys_unaffected_by_revocation(authenticator: ApiKeyAuthenticator) -> None:
    other = record_of("sk-sluice-other-key", "globex")
    authenticator.put(other.key_id, other)
    revoked = record_of(KEY, "acme", revoked_at=CREATED_AT)

    authenticator.put(revoked.key_id, revoked)

    assert authenticator.tenant_for("Bearer sk-sluice-other-key") == "globex"
