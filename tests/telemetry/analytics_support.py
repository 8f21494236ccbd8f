"""A store seeded with two tenants' events, and the hostile queries that analytics tests send to it."""

from __future__ import annotations

import clickhouse_connect

from services.telemetry.migrations import load_migrations
from services.telemetry.store import EventStore

# Events stored per tenant; the names match the ingress tests' API keys.
ROWS_BY_TENANT = {"acme": 3, "globex": 2}

_INSERT_SQL = """
INSERT INTO events (event_id, type, schema_version, request_id, tenant, ts, payload)
SELECT concat({tenant:String}, '-', toString(number)), 'request.accepted', 1,
       concat('request-', toString(number)), {tenant:String}, now64(6), '{}'
FROM numbers({count:UInt32})
"""

# Each hostile query with a part of the error message that names what was rejected.
HOSTILE_QUERIES = [
    ("DROP TABLE events", "DROP"),
    ("INSERT INTO events (event_id) VALUES ('x')", "INSERT"),
    ("ALTER TABLE events DELETE WHERE 1", "ALTER"),
    ("SELECT * FROM url('http://127.0.0.1:1/x', CSV)", "table function url()"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "table function file()"),
    ("SELECT * FROM remote('127.0.0.1', default.events)", "table function remote()"),
    ("SELECT * FROM s3('http://127.0.0.1:1/bucket/x.csv')", "table function s3()"),
    ("SELECT * FROM mysql('127.0.0.1:1', 'db', 't', 'u', 'p')", "table function mysql()"),
    ("SELECT * FROM merge('ev.*')", "table function merge()"),
    ("SELECT * FROM view(SELECT * FROM events)", "table function view()"),
    ("SELECT name FROM system.tables", "system.tables is a system table"),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "system table"),
    ("SELECT count() FROM other_database.events", "names a database"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS clauses are not allowed"),
    ("SELECT count() FROM events SETTINGS max_execution_time = 3600", "SETTINGS clauses are not allowed"),
    ("SELECT 1; SELECT 2", "more statements or a comment after a ';'"),
    ("SELECT 1; -- ", "more statements or a comment after a ';'"),
    ("SELECT 1; -- \nDROP TABLE events", "more statements or a comment after a ';'"),
    ("SELECT 1 /* */; DROP TABLE events", "more statements or a comment after a ';'"),
    ("SELECT * FROM events UNION ALL SELECT * FROM schema_migrations", "table 'schema_migrations' is not available"),
    ("SELECT * FROM schema_migrations AS events", "table 'schema_migrations' is not available"),
    ("WITH events AS (SELECT * FROM events) SELECT count() FROM events", "CTE 'events' has the name of a table"),
    (
        "WITH schema_migrations AS (SELECT * FROM schema_migrations) SELECT * FROM schema_migrations",
        "table 'schema_migrations' is not available",
    ),
    (
        "WITH b AS (SELECT * FROM schema_migrations), schema_migrations AS (SELECT 1) SELECT * FROM b",
        "table 'schema_migrations' is not available",
    ),
    ("WITH 1 AS schema_migrations SELECT * FROM schema_migrations", "table 'schema_migrations' is not available"),
    ("WITH a AS (SELECT 1), a AS (SELECT 2) SELECT * FROM a", "defined twice"),
    ("WITH RECURSIVE t AS (SELECT 1) SELECT * FROM t", "WITH RECURSIVE"),
    ("SELECT * FROM {table:Identifier}", "table expression"),
    ("SELECT {column:Identifier} FROM events", "values only"),
    ("SELECT count() FROM events WHERE request_id IN schema_migrations", "reads a table by name"),
    ("SELECT file('/etc/passwd')", "function file()"),
    ("SELECT dictGet('tenants', 'name', 1)", "function dictGet()"),
    ("SELECT joinGet('other', 'v', 1)", "function joinGet()"),
    ("SELECT 1 INTO OUTFILE '/tmp/out.csv'", "INTO OUTFILE writes a file"),
    ("SELECT 1 FORMAT JSON", "FORMAT clauses"),
    ("SELECT 'unterminated", "could not parse"),
]


async def open_seeded_store(clickhouse_dsn: str, *, query_max_execution_time_s: int) -> EventStore:
    """Open a migrated store holding `ROWS_BY_TENANT` events; the caller closes it."""
    store = EventStore.open(clickhouse_dsn, query_max_execution_time_s=query_max_execution_time_s)
    await store.migrate(load_migrations())
    writer = clickhouse_connect.get_client(dsn=clickhouse_dsn)
    try:
        for tenant, count in ROWS_BY_TENANT.items():
            writer.command(_INSERT_SQL, parameters={"tenant": tenant, "count": count})
    finally:
        writer.close()
    return store
