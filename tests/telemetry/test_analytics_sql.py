"""The analytics SQL check rejects hostile queries and confines table reads to one tenant."""

from __future__ import annotations

import re

import pytest

from services.telemetry.analytics_sql import TENANT_PARAMETER, confine_sql, confined_parameters
from shared.store_client import StoreQueryError
from tests.telemetry.analytics_support import HOSTILE_QUERIES

TENANT_SUBQUERY = "(SELECT * FROM events WHERE tenant = {sluice_tenant: String})"


@pytest.mark.parametrize(("sql", "message"), HOSTILE_QUERIES)
def test_hostile_query_rejected(sql: str, message: str) -> None:
    with pytest.raises(StoreQueryError, match=re.escape(message)):
        confine_sql(sql, "acme")


def test_table_replaced_by_tenant_subquery() -> None:
    confined = confine_sql("SELECT count() FROM events WHERE tenant = 'globex' OR 1 = 1", "acme")

    assert confined == f"SELECT count() FROM {TENANT_SUBQUERY} AS events WHERE tenant = 'globex' OR 1 = 1"


def test_alias_kept_on_subquery() -> None:
    confined = confine_sql("SELECT e.type FROM events AS e", "acme")

    assert confined == f"SELECT e.type FROM {TENANT_SUBQUERY} AS e"


def test_final_moves_into_subquery() -> None:
    confined = confine_sql("SELECT count() FROM events FINAL", "acme")

    assert confined == (
        "SELECT count() FROM (SELECT * FROM events FINAL WHERE tenant = {sluice_tenant: String}) AS events"
    )


def test_every_reference_confined() -> None:
    sql = (
        "WITH recent AS (SELECT request_id FROM events) "
        "SELECT count() FROM events AS a JOIN events AS b USING (request_id) "
        "WHERE a.request_id IN (SELECT request_id FROM recent) AND b.type IN (SELECT type FROM events)"
    )

    confined = confine_sql(sql, "acme")

    assert confined.count(TENANT_SUBQUERY) == 4
    assert " events " not in confined.replace(TENANT_SUBQUERY, "")


def test_cte_reference_not_rewritten() -> None:
    confined = confine_sql("WITH mine AS (SELECT type FROM events) SELECT type FROM mine", "acme")

    assert confined == f"WITH mine AS (SELECT type FROM {TENANT_SUBQUERY} AS events) SELECT type FROM mine"


def test_comments_dropped() -> None:
    confined = confine_sql("SELECT 1 -- */ DROP TABLE events\n/* note */", "acme")

    assert confined == "SELECT 1"


def test_numbers_table_function_allowed() -> None:
    assert confine_sql("SELECT number FROM numbers(3)", "acme") == "SELECT number FROM numbers(3)"


def test_value_placeholders_kept() -> None:
    confined = confine_sql("SELECT count() FROM events WHERE type = {type:String}", "acme")

    assert confined.endswith("WHERE type = {type: String}")


def test_tenant_parameter_added() -> None:
    assert confined_parameters({"type": "x"}, "acme") == {"type": "x", TENANT_PARAMETER: "acme"}


def test_tenant_parameter_reserved() -> None:
    with pytest.raises(StoreQueryError, match="reserved"):
        confined_parameters({TENANT_PARAMETER: "globex"}, "acme")


@pytest.mark.parametrize(
    "table", ["request_signals", "request_signals_per_minute", "scanner_signals_per_minute", "drift_reports", "exposures", "feedback", "model_evals"]
)
def test_signal_tables_confined(table: str) -> None:
    confined = confine_sql(f"SELECT count() FROM {table}", "acme")

    assert f"FROM (SELECT * FROM {table} WHERE tenant = {{{TENANT_PARAMETER}: String}}) AS {table}" in confined


def test_admin_query_checked_not_rewritten() -> None:
    assert confine_sql("SELECT count() FROM request_signals", None) == "SELECT count() FROM request_signals"
    with pytest.raises(StoreQueryError, match="system table"):
        confine_sql("SELECT name FROM system.tables", None)
