"""Checking API users' SQL and confining it to one tenant's rows, for `POST /v1/analytics/query`.

The mechanism is a rewrite of the parsed query, so it needs nothing from the
server and works the same on chDB and on a ClickHouse server. sqlglot parses
the SQL with its ClickHouse dialect. The check rejects everything but one
SELECT over the tables in `CONFINED_TABLES`, the CTEs the query defines and
the table functions in `ALLOWED_TABLE_FUNCTIONS`. The rewrite then replaces
each reference to a confined table with the subquery
`(SELECT * FROM events WHERE tenant = {sluice_tenant:String}) AS <alias>`, and
the store runs the SQL that sqlglot generates from the checked tree, without
comments. So the text that runs is the text that was checked, and a
`WHERE tenant = 'other'` or `OR 1 = 1` of the user's only narrows the
tenant's own rows. The store's reader session is `readonly=1` as well, so a
statement that got past these checks still could not write.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.tokens import TokenType

from shared.store_client import StoreQueryError

DIALECT = "clickhouse"

# The tables an analytics query may read, each with its tenant column: every
# table of schemas/clickhouse/ but schema_migrations, which belongs to no
# tenant, and the materialized views, which only write to these tables.
CONFINED_TABLES = {
    "events": "tenant",
    "request_signals": "tenant",
    "request_signals_per_minute": "tenant",
    "scanner_signals_per_minute": "tenant",
    "drift_reports": "tenant",
    "exposures": "tenant",
    "feedback": "tenant",
    "model_evals": "tenant",
}

# The query parameter that carries the caller's tenant, bound on the server.
TENANT_PARAMETER = "sluice_tenant"

# Only table functions that generate rows read no stored data, so every other
# one (url, file, remote, s3, mysql, merge, view, ...) is rejected.
ALLOWED_TABLE_FUNCTIONS = frozenset({"numbers"})

# Scalar functions that read files, dictionaries or other tables by name,
# so a tenant filter on the FROM clause does not cover them. ClickHouse has
# more than a thousand functions, so this is a deny list.
# NOTE: a function added to ClickHouse later that reads a table by name
# would pass this check; the readonly session still keeps it from writing.
REJECTED_FUNCTIONS = frozenset(
    {
        "file",
        "joinget",
        "joingetornull",
        "hascolumnintable",
        "catboostevaluate",
        "naivebayesclassifier",
        "getserversetting",
        "globalin",
        "globalnotin",
        "globalnullin",
        "globalnotnullin",
    }
)
# dictGet, dictHas, dictGetHierarchy and the other dictionary functions.
REJECTED_FUNCTION_PREFIXES = ("dict",)

_SYSTEM_DATABASES = frozenset({"system", "information_schema"})


def confine_sql(sql: str, tenant: str | None) -> str:
    """Return `sql` checked and rewritten to read only `tenant`'s rows; raises `StoreQueryError` naming what was rejected.

    With a tenant, the returned SQL uses the placeholder
    `{sluice_tenant:String}`: bind `confined_parameters(parameters, tenant)`
    when running it. With None (an admin's query) the SQL is checked the
    same way and reads every tenant's rows.
    """
    reject_file_output(sql)
    query = _parse_one_query(sql)
    confined_tables = _checked_tables(query)
    if tenant is not None:
        for table in confined_tables:
            _replace_with_tenant_subquery(table)
    return query.sql(dialect=DIALECT, comments=False)


def reject_file_output(sql: str) -> None:
    """Raise `StoreQueryError` when `sql` writes its result to a file (`INTO OUTFILE`).

    A read-only session still lets a SELECT write its result to a file on
    the store's host (checked on chDB 26.9 with `readonly=1`), so every
    store query goes through this check, confined or not. sqlglot cannot
    parse `INTO OUTFILE` in ClickHouse SQL, so the check reads its tokens,
    where strings and comments are already set apart.
    """
    try:
        tokens = sqlglot.Dialect.get_or_raise(DIALECT).tokenize(sql)
    except SqlglotError as error:
        raise StoreQueryError(f"could not parse the SQL as ClickHouse: {error}") from error
    for token, following in zip(tokens, tokens[1:]):
        if token.token_type is TokenType.INTO and following.text.upper() == "OUTFILE":
            raise StoreQueryError("store queries only read: INTO OUTFILE writes a file; remove the INTO clause")


def confined_parameters(parameters: dict[str, Any], tenant: str | None) -> dict[str, Any]:
    """Return the user's parameters plus the tenant's (none for an admin); raises `StoreQueryError` if the user set the tenant's."""
    if TENANT_PARAMETER in parameters:
        raise StoreQueryError(
            f"parameter {TENANT_PARAMETER!r} is reserved for the caller's tenant; rename your parameter"
        )
    return dict(parameters) if tenant is None else {**parameters, TENANT_PARAMETER: tenant}


def _parse_one_query(sql: str) -> exp.Query:
    try:
        statements = sqlglot.parse(sql, read=DIALECT)
    except SqlglotError as error:
        raise StoreQueryError(f"could not parse the SQL as ClickHouse: {_parse_error_summary(error)}") from error
    # sqlglot returns a trailing comment after a ';' as a statement of its own.
    if len(statements) != 1:
        raise StoreQueryError(
            "analytics queries run one statement, but this SQL has more statements or a comment after a ';'. "
            "Send a single SELECT with nothing but whitespace after its final semicolon"
        )
    query = statements[0]
    if not isinstance(query, exp.Query):
        kind = type(query).__name__.upper() if query is not None else "nothing"
        raise StoreQueryError(f"analytics queries run one SELECT; this statement is a {kind}")
    return query


def _parse_error_summary(error: SqlglotError) -> str:
    # The message of a ParseError repeats the SQL with terminal colour codes.
    if isinstance(error, ParseError) and error.errors:
        first = error.errors[0]
        return f"{first['description']} at line {first['line']}, column {first['col']} (near {first['highlight']!r})"
    return str(error)


def _checked_tables(query: exp.Query) -> list[exp.Table]:
    """Check every node of `query`; return the references to confined tables, to be rewritten."""
    _check_cte_names(query)
    confined: list[exp.Table] = []
    for node in query.walk():
        _check_node(node)
        if isinstance(node, exp.Table) and _check_table(node):
            confined.append(node)
    return confined


def _check_node(node: exp.Expression) -> None:
    if isinstance(node, (exp.DDL, exp.DML, exp.Command, exp.Into, exp.Set)):
        raise StoreQueryError(
            f"analytics queries only read: {type(node).__name__.upper()} is not allowed; send a single SELECT"
        )
    if isinstance(node, exp.Query):
        _check_query_clauses(node)
    elif isinstance(node, exp.Func):
        _check_function(node)
    elif isinstance(node, exp.Placeholder):
        _check_placeholder(node)
    elif isinstance(node, exp.In) and node.args.get("field") is not None:
        raise StoreQueryError(
            f"`IN {node.args['field'].sql(dialect=DIALECT)}` reads a table by name; "
            "write IN (SELECT ... FROM events) instead"
        )


def _check_query_clauses(query: exp.Query) -> None:
    # SETTINGS could lift the session's limits, and FORMAT changes what the store parses.
    if query.args.get("settings"):
        raise StoreQueryError(
            "SETTINGS clauses are not allowed in analytics queries: the store sets readonly, the time limit "
            "and the row cap itself; remove the SETTINGS clause"
        )
    if query.args.get("format"):
        raise StoreQueryError("FORMAT clauses are not allowed in analytics queries; the API replies with JSON rows")


def _check_function(function: exp.Func) -> None:
    name = _function_name(function)
    lowered = name.lower()
    if lowered in REJECTED_FUNCTIONS or lowered.startswith(REJECTED_FUNCTION_PREFIXES):
        raise StoreQueryError(
            f"function {name}() is not allowed in analytics queries because it reads files, dictionaries or "
            "tables outside the tenant's rows"
        )


def _check_placeholder(placeholder: exp.Placeholder) -> None:
    # `{name:Identifier}` substitutes a table or column name that the check cannot inspect.
    if not isinstance(placeholder.args.get("kind"), exp.DataType):
        raise StoreQueryError(
            f"placeholder {{{placeholder.name}:{placeholder.args.get('kind')}}} is not allowed in analytics "
            "queries; use placeholders for values only, such as {name:String}"
        )


def _check_table(table: exp.Table) -> bool:
    """Check one table reference; return True when it names a confined table."""
    if isinstance(table.this, exp.Func):
        _check_table_function(table.this)
        return False
    if not isinstance(table.this, exp.Identifier):
        raise StoreQueryError(
            f"table expression {table.sql(dialect=DIALECT)!r} is not allowed in analytics queries; name a table "
            f"({', '.join(sorted(CONFINED_TABLES))}), a CTE or a subquery"
        )
    if table.args.get("db") is not None or table.args.get("catalog") is not None:
        raise _qualified_table_error(table)
    if table.name in _visible_cte_names(table):
        return False
    if table.name not in CONFINED_TABLES:
        raise StoreQueryError(
            f"table {table.name!r} is not available to analytics queries; the available tables are "
            f"{sorted(CONFINED_TABLES)}"
        )
    return True


def _check_table_function(function: exp.Func) -> None:
    name = _function_name(function)
    if name not in ALLOWED_TABLE_FUNCTIONS:
        raise StoreQueryError(
            f"table function {name}() is not allowed in analytics queries; they may read only the tables "
            f"{sorted(CONFINED_TABLES)} and the table functions {sorted(ALLOWED_TABLE_FUNCTIONS)}"
        )


def _qualified_table_error(table: exp.Table) -> StoreQueryError:
    database = table.args["db"].name if table.args.get("db") is not None else ""
    if database.lower() in _SYSTEM_DATABASES:
        return StoreQueryError(
            f"{database}.{table.name} is a system table, which analytics queries may not read; "
            f"query the tables {sorted(CONFINED_TABLES)}"
        )
    return StoreQueryError(
        f"table {table.sql(dialect=DIALECT)!r} names a database; analytics queries read the store's own "
        f"database only, so write the bare table name ({', '.join(sorted(CONFINED_TABLES))})"
    )


def _check_cte_names(query: exp.Query) -> None:
    # Unique names that shadow no table keep `_visible_cte_names` simple: a
    # CTE that refers to its own name reads the real table in ClickHouse.
    seen: set[str] = set()
    for cte in query.find_all(exp.CTE):
        name = cte.alias
        if name in CONFINED_TABLES:
            raise StoreQueryError(f"the CTE {name!r} has the name of a table; rename the CTE")
        if name in seen:
            raise StoreQueryError(f"the CTE name {name!r} is defined twice; give each CTE its own name")
        seen.add(name)
    for with_clause in query.find_all(exp.With):
        if with_clause.args.get("recursive"):
            raise StoreQueryError("WITH RECURSIVE is not allowed in analytics queries; use a plain WITH")


def _visible_cte_names(table: exp.Table) -> set[str]:
    """Return the names of the table CTEs that `table` can refer to.

    A reference can refer to the CTEs of every enclosing query, except that
    inside a CTE's own body it can refer only to the CTEs defined before it
    in the same WITH.
    ClickHouse (chDB 4.4) also resolves later siblings, but treating those as
    table names only rejects more. Scalar CTEs (`WITH 1 AS x`) are never
    table sources: ClickHouse reads `FROM x` as the table x.
    """
    names: set[str] = set()
    child: exp.Expression = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):
            names.update(_table_cte_names(node.expressions[: child.index]))
        elif isinstance(node, exp.Query):
            with_clause = _with_clause(node)
            if with_clause is not None and with_clause is not child:
                names.update(_table_cte_names(with_clause.expressions))
        child, node = node, node.parent
    return names


def _table_cte_names(ctes: list[exp.CTE]) -> set[str]:
    return {cte.alias for cte in ctes if not cte.args.get("scalar")}


def _with_clause(query: exp.Query) -> exp.With | None:
    return next((value for value in query.args.values() if isinstance(value, exp.With)), None)


def _replace_with_tenant_subquery(table: exp.Table) -> None:
    """Replace `table` (with its FINAL, if any) by a subquery of the tenant's rows under the same alias."""
    target: exp.Expression = table.parent if isinstance(table.parent, exp.Final) else table
    alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(table.name))

    source = table.copy()
    source.set("alias", None)
    if isinstance(target, exp.Final):
        source = exp.Final(this=source)
    tenant_filter = exp.EQ(
        this=exp.column(CONFINED_TABLES[table.name]),
        expression=exp.Placeholder(this=exp.var(TENANT_PARAMETER), kind=exp.DataType.build("String", dialect=DIALECT)),
    )
    subquery = exp.select("*").from_(source).where(tenant_filter).subquery()
    subquery.set("alias", alias.copy())
    target.replace(subquery)


def _function_name(function: exp.Func) -> str:
    # sqlglot keeps the name of a function it does not know and gives a known one its canonical name.
    if isinstance(function, (exp.Anonymous, exp.AnonymousAggFunc)):
        return function.name
    return function.sql_name().lower()
