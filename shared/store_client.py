"""The client of the telemetry service's read-only store API, and the API's wire format.

The telemetry service is the only process that opens ClickHouse. Everything
else reads the `events` table by sending a request on `sluice.store.query`
(core NATS request/reply):

    request  {"sql": str, "parameters": {name: value}, "page_size": int, "offset": int,
              "confine_to_tenant": str | null, "user_sql": bool}
    reply    {"columns": [str], "rows": [[value]], "next_offset": int | null}
             or {"error": {"code": "invalid_query" | "store_unavailable", "message": str}}

`sql` is one SELECT (or WITH ... SELECT) statement. Values are bound on the
server from `{name:Type}` placeholders, as ClickHouse's query parameters, so
callers never format values into SQL. A reply contains at most `page_size` rows
and may contain fewer to stay under NATS's message size limit. `next_offset`
is the offset of the next page, or null after the last row. Pages are stable
only when the query has an ORDER BY. Datetimes arrive as ISO 8601 strings in
UTC, decimals, UUIDs and IP addresses as strings, and NaN or infinity as null.

`user_sql` marks SQL that an API user wrote (`POST /v1/analytics/query`).
The store then accepts only SELECTs over the tables and functions that
`services/telemetry/analytics_sql.py` allows, and rejects a result of more
rows than its analytics row cap. With `confine_to_tenant` it also reads only
that tenant's rows. A tenant's key always sets it. An admin key's query
leaves it null, so it reads every tenant's rows. `confine_to_tenant` implies
`user_sql`.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.subjects import STORE_QUERY_SUBJECT

DEFAULT_PAGE_SIZE = 1000
# By estimate, 10,000 rows of a few short columns make a few hundred kilobytes
# of JSON. Larger pages would mostly be cut by the 1 MiB message limit anyway.
MAX_PAGE_SIZE = 10_000
# Report queries over months of events can run for seconds, and the broker's
# request default of 0.5 s would cut them off. The telemetry service stops a
# query after 20 s (its `query_max_execution_time_s`), so a slow query gets
# the server's error reply before this client times out.
DEFAULT_QUERY_TIMEOUT_S = 30.0

# Parameter names are identifiers, because clickhouse-connect reads `$name$` as a heredoc.
_PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

ErrorCode = Literal["invalid_query", "store_unavailable"]


class StoreError(Exception):
    """Base class of every store API failure, with the wire error code as `code`."""

    code: ClassVar[str] = "store_error"


class StoreQueryError(StoreError):
    """The query is invalid: not a single SELECT, a syntax or type error, an unknown table or column, or bad paging."""

    code: ClassVar[str] = "invalid_query"


class StoreUnavailable(StoreError):
    """The store did not reply: no telemetry service replied in time, or ClickHouse failed. Retrying later may work."""

    code: ClassVar[str] = "store_unavailable"


_ERRORS_BY_CODE: dict[str, type[StoreError]] = {cls.code: cls for cls in (StoreQueryError, StoreUnavailable)}


class StoreQuery(BaseModel):
    """One request to the store API, validated the same way by the client and the telemetry service."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    page_size: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    offset: int = Field(default=0, ge=0)
    # None for the services' own queries and an admin's analytics SQL, which may read every tenant's rows.
    confine_to_tenant: str | None = Field(default=None, min_length=1)
    # True for SQL that an API user wrote, which the store checks and caps.
    user_sql: bool = False

    @property
    def is_user_sql(self) -> bool:
        """Whether the store must check and cap the SQL: an API user wrote it."""
        return self.user_sql or self.confine_to_tenant is not None

    @field_validator("parameters")
    @classmethod
    def _check_parameter_names(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        for name in parameters:
            if not _PARAMETER_NAME.match(name):
                raise ValueError(f"parameter name {name!r} is not an identifier; use letters, digits and underscores")
        return parameters


class StorePage(BaseModel):
    """One page of a query result; `next_offset` is None after the last row."""

    columns: list[str]
    rows: list[list[Any]]
    next_offset: int | None = None


class StoreErrorDetail(BaseModel):
    code: ErrorCode
    message: str


def describe_validation_error(error: ValidationError) -> str:
    """Return a one-line description of each invalid field, without the input values."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in item["loc"]) or "request"
        problems.append(f"{field}: {item['msg']}")
    return "; ".join(problems)


def error_reply(error: StoreError) -> dict[str, Any]:
    """Return the wire form of `error`, as the telemetry service sends it."""
    return {"error": StoreErrorDetail(code=error.code, message=str(error)).model_dump()}


class StoreClient:
    """Sends queries to the telemetry service's store API over a connected NATS client.

    Raises `StoreQueryError` for a query that the store rejects or that fails
    the same checks before it is sent. Raises `StoreUnavailable` when no reply
    comes or the store failed. Both derive from `StoreError`.
    """

    def __init__(self, nats_client: NatsClient, *, subject: str = STORE_QUERY_SUBJECT) -> None:
        self._nats = nats_client
        self._subject = subject

    async def query(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        offset: int = 0,
        timeout_s: float = DEFAULT_QUERY_TIMEOUT_S,
        confine_to_tenant: str | None = None,
        user_sql: bool = False,
    ) -> StorePage:
        """Run `sql` and return the page of at most `page_size` rows starting at row `offset`.

        With `user_sql` or `confine_to_tenant`, the store checks `sql` as an
        API user's query; with `confine_to_tenant` it reads only that tenant's rows.
        """
        request = _build_request(sql, parameters, page_size, offset, confine_to_tenant, user_sql)
        reply = await self._request(request, timeout_s)
        return _parse_reply(reply)

    async def query_all(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout_s: float = DEFAULT_QUERY_TIMEOUT_S,
    ) -> list[list[Any]]:
        """Run `sql` page by page and return every row; `timeout_s` applies to each page."""
        result = await self.query_all_pages(sql, parameters, page_size=page_size, timeout_s=timeout_s)
        return result.rows

    async def query_all_pages(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout_s: float = DEFAULT_QUERY_TIMEOUT_S,
        confine_to_tenant: str | None = None,
        user_sql: bool = False,
    ) -> StorePage:
        """Run `sql` page by page and return the columns and every row as one page; `timeout_s` applies to each page."""
        columns: list[str] = []
        rows: list[list[Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = await self.query(
                sql,
                parameters,
                page_size=page_size,
                offset=offset,
                timeout_s=timeout_s,
                confine_to_tenant=confine_to_tenant,
                user_sql=user_sql,
            )
            columns = page.columns
            rows.extend(page.rows)
            offset = _checked_next_offset(offset, page)
        return StorePage(columns=columns, rows=rows)

    async def _request(self, request: StoreQuery, timeout_s: float) -> bytes:
        payload = request.model_dump_json().encode()
        try:
            message = await self._nats.request(self._subject, payload, timeout=timeout_s)
        except NoRespondersError as error:
            raise StoreUnavailable(
                f"no telemetry service listens on {self._subject}; start it (`python -m services.telemetry`)"
            ) from error
        except NatsTimeoutError as error:
            raise StoreUnavailable(
                f"no reply on {self._subject} within {timeout_s} s; the query may be too slow or the "
                "telemetry service overloaded: narrow the query or pass a larger timeout_s"
            ) from error
        return message.data


def _checked_next_offset(offset: int, page: StorePage) -> int | None:
    # A reply that does not move forward would make `query_all` loop forever.
    if page.next_offset is not None and page.next_offset <= offset:
        raise StoreError(f"the store API returned next_offset {page.next_offset} for a page at offset {offset}")
    return page.next_offset


def _build_request(
    sql: str,
    parameters: dict[str, Any] | None,
    page_size: int,
    offset: int,
    confine_to_tenant: str | None,
    user_sql: bool,
) -> StoreQuery:
    try:
        return StoreQuery(
            sql=sql,
            parameters=parameters or {},
            page_size=page_size,
            offset=offset,
            confine_to_tenant=confine_to_tenant,
            user_sql=user_sql,
        )
    except ValidationError as error:
        raise StoreQueryError(f"invalid store query: {describe_validation_error(error)}") from error


def _parse_reply(data: bytes) -> StorePage:
    try:
        reply = json.loads(data)
    except ValueError as error:
        raise StoreError(f"the store API replied with invalid JSON ({len(data)} bytes)") from error
    if isinstance(reply, dict) and "error" in reply:
        raise _error_from_reply(reply["error"])
    try:
        return StorePage.model_validate(reply)
    except ValidationError as error:
        raise StoreError(f"the store API replied with an invalid page: {describe_validation_error(error)}") from error


def _error_from_reply(detail: Any) -> StoreError:
    try:
        parsed = StoreErrorDetail.model_validate(detail)
    except ValidationError:
        return StoreError(f"the store API replied with an unknown error: {detail!r}")
    return _ERRORS_BY_CODE[parsed.code](parsed.message)
