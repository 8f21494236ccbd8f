"""API keys: the per-key record, tenant names, key generation and the seed file of digests.

Sluice stores only the SHA-256 digest of each key, so nothing it stores
reveals a key. The records live in a NATS JetStream key-value bucket
(`shared.api_key_store`). The JSON file that `sluice up` writes seeds that
bucket. Its format: `{"keys": [{"tenant": "dev", "sha256": "<hex digest of the key>"}]}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEV_TENANT = "dev"
# 32 random bytes, URL-safe: the same strength as a typical cloud API key.
_KEY_BYTES = 32
_KEY_PREFIX = "sk-sluice-"
# A key id is the first 16 hex characters (64 bits) of the key's digest. The
# same key always gets the same id, so replicas that seed the same file write
# the same entries. By the birthday bound, two of a million ids collide with a
# probability of about 3e-8. Knowing part of the digest does not help to find
# a key of 32 random bytes.
KEY_ID_HEX_CHARS = 16

# Tenant names become NATS subject tokens and parts of Redis keys, so they
# contain no dots, spaces, wildcards or colons.
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TENANT_RULE = "1 to 63 characters: lowercase letters, digits, '_' and '-', starting with a letter or digit"


class ApiKeyFileError(ValueError):
    """The API key file is missing or malformed."""


class InvalidTenantError(ValueError):
    """A tenant name is not safe to use as a NATS subject token and a Redis key part."""


def validate_tenant(tenant: str) -> str:
    """Return `tenant` unchanged; raise `InvalidTenantError` naming the value and the rule."""
    if not TENANT_PATTERN.match(tenant):
        raise InvalidTenantError(f"invalid tenant name {tenant!r}: use {_TENANT_RULE}, for example 'acme' or 'team-42'")
    return tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_for(digest: str) -> str:
    return digest[:KEY_ID_HEX_CHARS]


def new_plain_key() -> str:
    return _KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)


class ApiKeyRecord(BaseModel):
    """One API key as the key-value bucket stores it, under its `key_id`.

    A limit of None means unlimited. A revoked key stays in the bucket, so
    `sluice keys list` still shows it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str = Field(pattern=rf"^[0-9a-f]{{{KEY_ID_HEX_CHARS}}}$")
    tenant: str
    name: str | None = None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime
    revoked_at: datetime | None = None
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    # An admin key's analytics SQL reads every tenant's rows; any other key
    # reads only its own tenant's. False for records stored before the field.
    admin: bool = False

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, tenant: str) -> str:
        return validate_tenant(tenant)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> bytes:
        """Serialize the record without its key id, which is the bucket key."""
        return self.model_dump_json(exclude={"key_id"}).encode()

    @classmethod
    def from_json(cls, key_id: str, data: bytes) -> ApiKeyRecord:
        """Parse a bucket value stored under `key_id`; raise `ValueError` (pydantic's `ValidationError`) when invalid."""
        fields: Any = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError(f"API key {key_id}: the value must be a JSON object, got {type(fields).__name__}")
        return cls.model_validate({**fields, "key_id": key_id})


def load_api_keys(path: Path) -> dict[str, str]:
    """Return a mapping from key digest to tenant; raises `ApiKeyFileError` naming the file and the problem."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ApiKeyFileError(f"API key file {path} not found: run `sluice up` once or set SLUICE_API_KEYS_FILE") from error
    except json.JSONDecodeError as error:
        raise ApiKeyFileError(f"API key file {path} is not valid JSON: {error}") from error
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ApiKeyFileError(f'API key file {path} must contain {{"keys": [{{"tenant": ..., "sha256": ...}}]}}')
    digests: dict[str, str] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("tenant"), str) or not isinstance(entry.get("sha256"), str):
            raise ApiKeyFileError(f"API key file {path}: keys[{index}] needs string fields 'tenant' and 'sha256'")
        try:
            validate_tenant(entry["tenant"])
        except InvalidTenantError as error:
            raise ApiKeyFileError(f"API key file {path}: keys[{index}]: {error}") from error
        digests[entry["sha256"]] = entry["tenant"]
    return digests


def seed_records(path: Path) -> list[ApiKeyRecord]:
    """Build a record without limits for each digest in the key file; raises `ApiKeyFileError`."""
    created_at = datetime.now(UTC)
    records = []
    for digest, tenant in load_api_keys(path).items():
        try:
            record = ApiKeyRecord(
                key_id=key_id_for(digest), tenant=tenant, name=f"from {path.name}", sha256=digest, created_at=created_at
            )
        except ValueError as error:
            raise ApiKeyFileError(f"API key file {path}: the entry of tenant {tenant!r} is invalid: {error}") from error
        records.append(record)
    return records


def add_api_key(path: Path, tenant: str) -> str:
    """Create a key for `tenant`, add its digest to the file (created if missing) and return the plain key."""
    key = new_plain_key()
    document = json.loads(path.read_text()) if path.exists() else {"keys": []}
    document["keys"].append({"tenant": validate_tenant(tenant), "sha256": hash_key(key)})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return key


def ensure_dev_key(keys_file: Path, dev_key_file: Path) -> str:
    """Return the development key, creating it (readable by the owner only) on first use."""
    if dev_key_file.exists():
        key = dev_key_file.read_text().strip()
        if keys_file.exists() and hash_key(key) in load_api_keys(keys_file):
            return key
    key = add_api_key(keys_file, DEV_TENANT)
    dev_key_file.parent.mkdir(parents=True, exist_ok=True)
    dev_key_file.write_text(key + "\n")
    os.chmod(dev_key_file, 0o600)
    return key
