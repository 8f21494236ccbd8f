"""The telemetry service: stores every event of the EVENTS stream in ClickHouse and serves read-only queries on it."""
