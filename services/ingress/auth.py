"""Bearer API key authentication: the key's tenant scopes every read and write.

The authenticator keeps the key records of the API key bucket in memory,
indexed by digest. A watch on the bucket keeps them current, so a key created
or revoked with `sluice keys` takes effect within milliseconds, with no restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

import structlog
from fastapi import Header
from nats.js import JetStreamContext

from shared.api_key_store import open_api_key_bucket, seed_api_keys, watch_api_keys
from shared.api_keys import ApiKeyRecord, hash_key, seed_records
from shared.runtime_config import KeyWatch

from services.ingress.errors import AuthenticationError

log = structlog.get_logger(__name__)

_BEARER_SCHEME = "bearer"

# The key that authenticated the current HTTP request, set by the tenant
# dependency. The acceptor reads it to charge the key's quota, so every route
# that uses the dependency (the native and the OpenAI-compatible routes) is
# charged without passing the key along. Each request runs in its own asyncio
# task with its own copy of the context, so requests never see each other's key.
_current_api_key: ContextVar[ApiKeyRecord | None] = ContextVar("sluice_current_api_key", default=None)


def current_api_key() -> ApiKeyRecord | None:
    """Return the key that authenticated the current request, or None outside an authenticated request."""
    return _current_api_key.get()


class ApiKeyAuthenticator:
    """Maps an `Authorization: Bearer KEY` header to the key's record.

    It stores only SHA-256 digests of keys. `start` seeds the API key bucket
    with `seed` and watches the bucket. The watch calls `put` and `remove` on
    the event loop, where the lookups run too, so no lock is needed.
    """

    def __init__(self, records: list[ApiKeyRecord] | None = None, *, seed: list[ApiKeyRecord] | None = None) -> None:
        self._by_digest: dict[str, ApiKeyRecord] = {}
        self._digest_by_key_id: dict[str, str] = {}
        self._seed = seed or []
        self._watch: KeyWatch[ApiKeyRecord] | None = None
        for record in records or []:
            self.put(record.key_id, record)

    @classmethod
    def from_file(cls, path: Path) -> ApiKeyAuthenticator:
        """Read the key file that seeds the bucket; raises `shared.api_keys.ApiKeyFileError` naming the file and the problem."""
        return cls(seed=seed_records(path))

    async def start(self, js: JetStreamContext) -> None:
        """Seed the bucket with the keys it lacks, then load every record and keep watching.

        Raises `shared.runtime_config.RuntimeConfigError` when the bucket cannot be opened or read.
        """
        kv = await open_api_key_bucket(js)
        seeded = await seed_api_keys(kv, self._seed)
        self._watch = watch_api_keys(kv, self.put, self.remove)
        await self._watch.start()
        log.info("api_keys_loaded", keys=len(self._by_digest), seeded_from_file=seeded)

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    def put(self, key_id: str, record: ApiKeyRecord) -> None:
        """Add or replace the record of `key_id`."""
        self.remove(key_id)
        self._by_digest[record.sha256] = record
        self._digest_by_key_id[key_id] = record.sha256

    def remove(self, key_id: str) -> None:
        """Forget `key_id`, so its key gets 401 like an unknown key; an unknown id is ignored."""
        digest = self._digest_by_key_id.pop(key_id, None)
        if digest is not None:
            self._by_digest.pop(digest, None)

    def authenticate(self, authorization: str | None) -> ApiKeyRecord:
        """Return the record of the key in an Authorization header value; raises `AuthenticationError`."""
        if not authorization:
            raise AuthenticationError("missing Authorization header: send `Authorization: Bearer <API key>`")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != _BEARER_SCHEME or not key.strip():
            raise AuthenticationError("malformed Authorization header: expected `Authorization: Bearer <API key>`")
        record = self._by_digest.get(hash_key(key.strip()))
        if record is None:
            raise AuthenticationError(
                "invalid API key: no such key exists; use a key issued for your tenant "
                "(`sluice keys create`, or the development key that `sluice up` writes to its data folder)"
            )
        if record.revoked:
            raise AuthenticationError(
                f"API key {record.key_id} was revoked at {record.revoked_at:%Y-%m-%d %H:%M:%S} UTC; "
                "ask for a new key (`sluice keys create`)"
            )
        return record

    def tenant_for(self, authorization: str | None) -> str:
        """Return the tenant of the key in an Authorization header value; raises `AuthenticationError`."""
        return self.authenticate(authorization).tenant


def tenant_dependency(authenticator: ApiKeyAuthenticator) -> Callable[..., Awaitable[str]]:
    """Return a FastAPI dependency that yields the caller's tenant or raises `AuthenticationError` (401).

    It also records the authenticating key for `current_api_key`.
    """

    async def caller_tenant(authorization: Annotated[str | None, Header()] = None) -> str:
        record = authenticator.authenticate(authorization)
        _current_api_key.set(record)
        return record.tenant

    return caller_tenant
