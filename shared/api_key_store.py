"""The API key bucket: create, list, revoke and seed key records in NATS JetStream key-value.

Each entry is keyed by the key id and its value is an `ApiKeyRecord` as JSON,
which contains the key's SHA-256 digest and never the key itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from shared.api_keys import ApiKeyRecord, hash_key, key_id_for, new_plain_key, validate_tenant
from shared.runtime_config import KeyWatch, ensure_bucket, seed_key

API_KEYS_BUCKET = "sluice_api_keys"
_BUCKET_DESCRIPTION = "Sluice API keys: one record per key id, with the key's SHA-256 digest and its limits"


class ApiKeyNotFoundError(LookupError):
    """No key with this id exists in the bucket."""


@dataclass(frozen=True)
class CreatedKey:
    """A new key's record and the plain key, which exists only in this object and is never stored."""

    record: ApiKeyRecord
    plain_key: str


async def open_api_key_bucket(js: JetStreamContext) -> KeyValue:
    """Open the API key bucket, creating it on first use; raises `shared.runtime_config.RuntimeConfigError`."""
    return await ensure_bucket(js, API_KEYS_BUCKET, _BUCKET_DESCRIPTION)


async def create_api_key(
    kv: KeyValue,
    tenant: str,
    *,
    name: str | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    admin: bool = False,
) -> CreatedKey:
    """Store a new key's record and return it with the plain key.

    Raises `shared.api_keys.InvalidTenantError` for an unsafe tenant name and
    `ValueError` for a limit below 1.
    """
    plain_key = new_plain_key()
    digest = hash_key(plain_key)
    record = ApiKeyRecord(
        key_id=key_id_for(digest),
        tenant=validate_tenant(tenant),
        name=name,
        sha256=digest,
        created_at=datetime.now(UTC),
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        admin=admin,
    )
    # `create` fails instead of overwriting when two keys share an id, which
    # the id length makes improbable.
    await kv.create(record.key_id, record.to_json())
    return CreatedKey(record, plain_key)


async def list_api_keys(kv: KeyValue, tenant: str | None = None) -> list[ApiKeyRecord]:
    """Return every key record, or only `tenant`'s, oldest first; an invalid entry raises `ValueError`."""
    try:
        key_ids = await kv.keys()
    except NoKeysError:
        return []
    records = [await _read(kv, key_id) for key_id in key_ids]
    selected = [record for record in records if tenant is None or record.tenant == tenant]
    return sorted(selected, key=lambda record: (record.created_at, record.key_id))


async def revoke_api_key(kv: KeyValue, key_id: str) -> ApiKeyRecord:
    """Mark the key revoked and return its record; a key revoked before keeps its first revocation time.

    Raises `ApiKeyNotFoundError` for an unknown id. The write expects the
    revision it read, so a concurrent change makes it fail instead of being lost.
    """
    try:
        entry = await kv.get(key_id)
    except KeyNotFoundError as error:
        raise ApiKeyNotFoundError(f"no API key with id {key_id!r}; `sluice keys list` shows the ids") from error
    record = ApiKeyRecord.from_json(key_id, entry.value or b"")
    if record.revoked:
        return record
    revoked = record.model_copy(update={"revoked_at": datetime.now(UTC)})
    await kv.update(key_id, revoked.to_json(), last=entry.revision)
    return revoked


async def seed_api_keys(kv: KeyValue, records: list[ApiKeyRecord]) -> int:
    """Add each record whose key id the bucket lacks; return how many were added.

    `shared.api_keys.seed_records` reads the records from the key file.
    """
    added = 0
    for record in records:
        added += await seed_key(kv, record.key_id, record.to_json())
    return added


def watch_api_keys(
    kv: KeyValue, on_update: Callable[[str, ApiKeyRecord], None], on_delete: Callable[[str], None]
) -> KeyWatch[ApiKeyRecord]:
    """Return a watch over every key record; start it to receive the current records and each change."""
    return KeyWatch(kv, ">", ApiKeyRecord.from_json, on_update, on_delete)


async def _read(kv: KeyValue, key_id: str) -> ApiKeyRecord:
    entry = await kv.get(key_id)
    return ApiKeyRecord.from_json(key_id, entry.value or b"")
