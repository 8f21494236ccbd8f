"""API keys: a JSON file that maps the SHA-256 of each key to its tenant.

The file holds only hashes, so reading it does not reveal a key. Its format:
`{"keys": [{"tenant": "dev", "sha256": "<hex digest of the key>"}]}`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

DEV_TENANT = "dev"
# 32 random bytes, URL-safe: the same strength as a typical cloud API key.
_KEY_BYTES = 32
_KEY_PREFIX = "sk-sluice-"


class ApiKeyFileError(ValueError):
    """The API key file is missing or malformed."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


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
        digests[entry["sha256"]] = entry["tenant"]
    return digests


def add_api_key(path: Path, tenant: str) -> str:
    """Create a key for `tenant`, add its digest to the file (created if missing) and return the plain key."""
    key = _KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
    document = json.loads(path.read_text()) if path.exists() else {"keys": []}
    document["keys"].append({"tenant": tenant, "sha256": hash_key(key)})
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
