"""Numbered SQL migrations apply in order, each once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.client import Client

from services.telemetry.migrations import MigrationError, apply_migrations, load_migrations


@pytest.fixture
def client(clickhouse_dsn: str) -> Iterator[Client]:
    client = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    yield client
    client.close()


def _write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql, encoding="utf-8")


def test_repository_migrations_load_in_order() -> None:
    versions = [migration.version for migration in load_migrations()]

    assert versions[0] == 1
    assert versions == sorted(versions)


@pytest.mark.clickhouse
def test_first_apply_creates_events_table(client: Client) -> None:
    applied = apply_migrations(client, load_migrations())

    assert applied == [migration.version for migration in load_migrations()]
    assert client.command("EXISTS TABLE events") == 1


@pytest.mark.clickhouse
def test_first_apply_creates_signal_tables(client: Client) -> None:
    apply_migrations(client, load_migrations())

    for table in ("request_signals", "request_signals_per_minute", "scanner_signals_per_minute"):
        assert client.command(f"EXISTS TABLE {table}") == 1, table


@pytest.mark.clickhouse
def test_second_apply_changes_nothing(client: Client) -> None:
    apply_migrations(client, load_migrations())

    applied_again = apply_migrations(client, load_migrations())

    assert applied_again == []
    recorded = client.query("SELECT version FROM schema_migrations ORDER BY version").result_rows
    assert recorded == [(migration.version,) for migration in load_migrations()]


@pytest.mark.clickhouse
def test_new_migration_applies_alone(client: Client, tmp_path: Path) -> None:
    _write(tmp_path, "001_first.sql", "CREATE TABLE IF NOT EXISTS first (id UInt8) ENGINE = MergeTree ORDER BY id;\n")
    apply_migrations(client, load_migrations(tmp_path))
    _write(
        tmp_path,
        "002_second.sql",
        "-- two statements\nCREATE TABLE IF NOT EXISTS second (id UInt8) ENGINE = MergeTree ORDER BY id;\n"
        "INSERT INTO second VALUES (7);\n",
    )

    applied = apply_migrations(client, load_migrations(tmp_path))

    assert applied == [2]
    assert client.command("SELECT id FROM second") == 7


def test_misnamed_file_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path, "1_events.sql", "SELECT 1;\n")

    with pytest.raises(MigrationError, match="NNN_name.sql"):
        load_migrations(tmp_path)


def test_duplicate_version_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path, "001_a.sql", "SELECT 1;\n")
    _write(tmp_path, "001_b.sql", "SELECT 2;\n")

    with pytest.raises(MigrationError, match=r"versions \[1\]"):
        load_migrations(tmp_path)


def test_comment_only_file_is_rejected(tmp_path: Path) -> None:
    _write(tmp_path, "001_empty.sql", "-- nothing yet;\n")

    with pytest.raises(MigrationError, match="no SQL statement"):
        load_migrations(tmp_path)
