"""Bearer API key authentication: the key's tenant scopes every read and write."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

from fastapi import Header

from shared.api_keys import hash_key, load_api_keys

from services.ingress.errors import AuthenticationError

_BEARER_SCHEME = "bearer"


class ApiKeyAuthenticator:
    """Maps an `Authorization: Bearer KEY` header to the key's tenant.

    Only SHA-256 digests of keys are held, as in the key file. The file is read
    once at construction: a key added later takes effect after a restart.
    """

    def __init__(self, digests_to_tenants: dict[str, str]) -> None:
        self._tenants = dict(digests_to_tenants)

    @classmethod
    def from_file(cls, path: Path) -> ApiKeyAuthenticator:
        """Load the key file; raises `shared.api_keys.ApiKeyFileError` naming the file and the problem."""
        return cls(load_api_keys(path))

    def tenant_for(self, authorization: str | None) -> str:
        """Return the tenant of the key in an Authorization header value; raises `AuthenticationError`."""
        if not authorization:
            raise AuthenticationError("missing Authorization header: send `Authorization: Bearer <API key>`")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != _BEARER_SCHEME or not key.strip():
            raise AuthenticationError("malformed Authorization header: expected `Authorization: Bearer <API key>`")
        tenant = self._tenants.get(hash_key(key.strip()))
        if tenant is None:
            raise AuthenticationError(
                "invalid API key: it is not in the API key file; use a key issued for your tenant "
                "(`sluice up` writes the development key to its data folder)"
            )
        return tenant


def tenant_dependency(authenticator: ApiKeyAuthenticator) -> Callable[..., Awaitable[str]]:
    """Return a FastAPI dependency that yields the caller's tenant or raises `AuthenticationError` (401)."""

    async def caller_tenant(authorization: Annotated[str | None, Header()] = None) -> str:
        return authenticator.tenant_for(authorization)

    return caller_tenant
