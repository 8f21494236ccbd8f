"""Applying the numbered SQL files of `schemas/clickhouse/` in order, each once.

A migration file is named `NNN_name.sql` (NNN its version). Statements end
with a semicolon at the end of a line. ClickHouse has no transactional DDL, so
a migration that stopped halfway runs again from its first statement on the
next start: write every statement so that running it twice is harmless
(`CREATE TABLE IF NOT EXISTS`, `ADD COLUMN IF NOT EXISTS`). Applied versions
are recorded in the `schema_migrations` table with the file's SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import structlog
from clickhouse_connect.driver.client import Client

from shared.settings import REPO_ROOT

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = REPO_ROOT / "schemas" / "clickhouse"

_FILE_NAME = re.compile(r"^(?P<version>\d{3})_(?P<name>[a-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)

# ReplacingMergeTree keyed on version: recording a version twice (two replicas
# starting at once) still reads as one row under FINAL.
_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    sha256 String,
    applied_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


class MigrationError(Exception):
    """A migration file is misnamed, empty, or shares its version with another file."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sha256: str
    statements: tuple[str, ...]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read every `*.sql` file of `directory`, sorted by version; raises `MigrationError` for a bad file set."""
    migrations = [_load_file(path) for path in sorted(directory.glob("*.sql"))]
    versions = [migration.version for migration in migrations]
    duplicates = sorted({version for version in versions if versions.count(version) > 1})
    if duplicates:
        raise MigrationError(
            f"migration versions {duplicates} appear in more than one file of {directory}; renumber them"
        )
    return sorted(migrations, key=lambda migration: migration.version)


def apply_migrations(client: Client, migrations: list[Migration]) -> list[int]:
    """Apply the migrations not yet recorded in `schema_migrations`, in order; return the versions applied now.

    Blocks while ClickHouse runs the DDL; call it from a thread in async code.
    Raises the client's errors unchanged.
    """
    client.command(_CREATE_MIGRATIONS_TABLE)
    recorded = _recorded_checksums(client)
    applied_now = []
    for migration in migrations:
        if migration.version in recorded:
            _warn_if_changed(migration, recorded[migration.version])
            continue
        _apply(client, migration)
        applied_now.append(migration.version)
    return applied_now


def _load_file(path: Path) -> Migration:
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise MigrationError(f"migration file {path} is not named NNN_name.sql (three digits, lowercase name)")
    text = path.read_text(encoding="utf-8")
    statements = tuple(statement.strip() for statement in _STATEMENT_END.split(text) if _has_sql(statement))
    if not statements:
        raise MigrationError(f"migration file {path} contains no SQL statement")
    checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Migration(int(match["version"]), match["name"], checksum, statements)


def _has_sql(chunk: str) -> bool:
    lines = (line.strip() for line in chunk.splitlines())
    return any(line and not line.startswith("--") for line in lines)


def _recorded_checksums(client: Client) -> dict[int, str]:
    result = client.query("SELECT version, sha256 FROM schema_migrations FINAL")
    return {int(version): sha256 for version, sha256 in result.result_rows}


def _warn_if_changed(migration: Migration, recorded_sha256: str) -> None:
    # An applied migration never runs again, so an edit to its file has no effect.
    if migration.sha256 != recorded_sha256:
        log.warning("migration_changed_after_apply", version=migration.version, migration=migration.name)


def _apply(client: Client, migration: Migration) -> None:
    for statement in migration.statements:
        client.command(statement)
    client.insert(
        "schema_migrations",
        [[migration.version, migration.name, migration.sha256]],
        column_names=["version", "name", "sha256"],
    )
    log.info("migration_applied", version=migration.version, migration=migration.name)
