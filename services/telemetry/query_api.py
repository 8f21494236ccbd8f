"""The store API: read-only SQL over core NATS request/reply, one page per reply.

The wire format is documented in `shared/store_client.py`. A request is
checked here (one SELECT, server-side parameters only), wrapped for paging as
`SELECT * FROM (<sql>) LIMIT page_size + 1 OFFSET offset` (the extra row shows
whether another page follows) and run on the store's read-only client. A plain
`SELECT *` around a subquery keeps the subquery's ORDER BY.

A request with `user_sql` or `confine_to_tenant` (an API user's SQL) is
first checked by `analytics_sql`, and rewritten to its tenant's rows when it
has `confine_to_tenant`. Its result may have at most
`analytics_max_result_rows` rows: the page that would pass the cap is
rejected.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import date, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from services.telemetry.analytics_sql import confine_sql, confined_parameters, reject_file_output
from services.telemetry.settings import DEFAULT_ANALYTICS_MAX_RESULT_ROWS
from services.telemetry.store import EventStore
from shared.store_client import StoreError, StoreQuery, StoreQueryError, describe_validation_error, error_reply

log = structlog.get_logger(__name__)

# Room left in a reply for the headers FastStream adds (correlation id,
# content type), which count against the server's max_payload.
REPLY_HEADROOM_BYTES = 4096

_READ_STATEMENTS = frozenset({"SELECT", "WITH"})
# Whitespace, comments and opening brackets that may come before the first keyword.
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.DOTALL)
_FIRST_WORD = re.compile(r"[A-Za-z_]+")
# ClickHouse's server-side parameter placeholder, `{name:Type}`.
_PLACEHOLDER = re.compile(r"\{\s*[A-Za-z_][A-Za-z0-9_]*\s*:[^}]+\}")


class StoreQueryHandler:
    """Serves one store API request at a time; replies are JSON bytes of at most `max_reply_bytes`."""

    def __init__(
        self,
        store: EventStore,
        max_reply_bytes: int,
        *,
        analytics_max_result_rows: int = DEFAULT_ANALYTICS_MAX_RESULT_ROWS,
    ) -> None:
        self._store = store
        self._max_reply_bytes = max_reply_bytes
        self._analytics_max_result_rows = analytics_max_result_rows

    async def reply(self, data: bytes) -> bytes:
        """Run the request in `data` and return the reply: a page, or an error with code and message."""
        started = time.perf_counter()
        try:
            reply = await self._run(data)
        except StoreError as error:
            log.info("store_query_rejected", code=error.code, error=str(error))
            return _encode(error_reply(error))
        log.debug(
            "store_query_served",
            rows=len(reply["rows"]),
            next_offset=reply["next_offset"],
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return _encode(reply)

    async def _run(self, data: bytes) -> dict[str, Any]:
        request = parse_request(data)
        if request.is_user_sql:
            request = confine_request(request, self._analytics_max_result_rows)
        sql = paged_sql(request)
        columns, rows = await self._store.query(sql, request.parameters)
        if request.is_user_sql:
            check_row_cap(rows, request, self._analytics_max_result_rows)
        return build_page(columns, rows, request, self._max_reply_bytes)


def parse_request(data: bytes) -> StoreQuery:
    """Validate a request; raises `StoreQueryError` naming each invalid field or the statement kind."""
    try:
        request = StoreQuery.model_validate_json(data)
    except ValidationError as error:
        raise StoreQueryError(f"invalid store query: {describe_validation_error(error)}") from error
    _check_read_statement(request.sql)
    reject_file_output(request.sql)
    _check_placeholders(request)
    return request


def confine_request(request: StoreQuery, max_result_rows: int) -> StoreQuery:
    """Return an API user's `request` checked and, with `confine_to_tenant`, rewritten to read only that tenant's rows.

    Its page ends at the row cap at the latest. Raises `StoreQueryError`
    when the SQL is rejected or `offset` is at or past the cap.
    """
    tenant = request.confine_to_tenant
    if request.offset >= max_result_rows:
        raise StoreQueryError(
            f"offset {request.offset} is at or past the analytics row cap of {max_result_rows} rows; "
            "aggregate or filter the query so that its result fits"
        )
    return request.model_copy(
        update={
            "sql": confine_sql(request.sql, tenant),
            "parameters": confined_parameters(request.parameters, tenant),
            "page_size": min(request.page_size, max_result_rows - request.offset),
        }
    )


def check_row_cap(rows: list[tuple[Any, ...]], request: StoreQuery, max_result_rows: int) -> None:
    """Raise `StoreQueryError` when `rows`, the page of a confined request plus its extra row, pass the cap."""
    # `confine_request` ends every page at the cap, so the extra row lies
    # past the cap only when the result has more rows than the cap allows.
    if request.offset + len(rows) > max_result_rows:
        raise StoreQueryError(
            f"the query returns more than {max_result_rows} rows, the analytics row cap; "
            "aggregate, filter or add a LIMIT"
        )


def paged_sql(request: StoreQuery) -> str:
    """Wrap the request's SQL so it returns one page plus one row."""
    body = request.sql.rstrip().rstrip(";").rstrip()
    # Newlines keep a trailing `--` comment in `body` from swallowing the bracket.
    return f"SELECT * FROM (\n{body}\n) LIMIT {request.page_size + 1} OFFSET {request.offset}"


def build_page(
    columns: list[str], rows: list[tuple[Any, ...]], request: StoreQuery, max_reply_bytes: int
) -> dict[str, Any]:
    """Return the reply for `rows` (at most page_size + 1 of them), cut early to fit `max_reply_bytes` of JSON."""
    has_more = len(rows) > request.page_size
    json_columns = list(columns)
    # The largest next_offset this page can produce, so the estimate is an upper bound.
    size = len(_encode({"columns": json_columns, "rows": [], "next_offset": request.offset + request.page_size}))
    page_rows: list[list[Any]] = []
    for row in rows[: request.page_size]:
        json_row = [json_value(value) for value in row]
        size += len(_encode(json_row)) + 1
        if size > max_reply_bytes:
            _check_row_fits(page_rows, request, max_reply_bytes)
            has_more = True
            break
        page_rows.append(json_row)
    next_offset = request.offset + len(page_rows) if has_more else None
    return {"columns": json_columns, "rows": page_rows, "next_offset": next_offset}


def json_value(value: Any) -> Any:
    """Convert one value from clickhouse-connect into JSON.

    Datetimes become ISO 8601 strings, decimals, UUIDs and addresses plain
    strings, and NaN or infinity null.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _check_read_statement(sql: str) -> None:
    start = _LEADING_NOISE.match(sql)
    word = _FIRST_WORD.match(sql, start.end() if start else 0)
    keyword = word.group(0).upper() if word else ""
    if keyword not in _READ_STATEMENTS:
        statement_start = keyword or sql.strip()[:20]
        raise StoreQueryError(
            f"the store API runs read-only SELECT queries; this statement starts with {statement_start!r}. "
            "Send a single SELECT (or WITH ... SELECT); events are written only by the telemetry service"
        )


def _check_placeholders(request: StoreQuery) -> None:
    # Without a placeholder clickhouse-connect would format the values into
    # the SQL text itself; the store API binds values on the server only.
    if request.parameters and not _PLACEHOLDER.search(request.sql):
        names = sorted(request.parameters)
        raise StoreQueryError(
            f"parameters {names} are given but the SQL has no {{name:Type}} placeholder; "
            "refer to each parameter as {name:Type}, e.g. {tenant:String}"
        )


def _check_row_fits(page_rows: list[list[Any]], request: StoreQuery, max_reply_bytes: int) -> None:
    if not page_rows:
        raise StoreQueryError(
            f"the row at offset {request.offset} does not fit in one reply of {max_reply_bytes} bytes; "
            "select fewer or shorter columns (e.g. substring(payload, 1, 1000))"
        )


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
