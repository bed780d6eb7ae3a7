"""Run a user's SELECT against the catalog, and nothing else. Plain module: no Dagster.

Two layers, so one mistake in either is not enough to change the catalog:

1. The statement is parsed (sqlglot, in the database's dialect) and must be exactly one
   read-only query: SELECT, or WITH ... SELECT, or a UNION of them, with no data-modifying CTE,
   no SELECT INTO, no row locks, and no function that reaches the server's files or processes.
   DDL, DML, ATTACH, PRAGMA, VACUUM INTO, COPY and anything that does not parse are refused.
2. The database enforces read-only execution itself: PostgreSQL runs it in a READ ONLY
   transaction; SQLite opens the file with ``mode=ro`` and an authorizer that allows reading
   only. (Before that open, a crashed writer's hot journal is rolled back, which a read-only
   connection cannot do.)

Rows are streamed in chunks (a server-side cursor on PostgreSQL), so a query selecting millions
of ids never holds them all in memory. What a query may cost is capped (:class:`SandboxLimits`,
from ``FASHION_QUERY_*`` variables): the SQL text's size (checked before parsing), how deeply it
nests (the parser's recursion), the distinct ids a plan may select, and the memory the plan may
grow by (:class:`SelectionGuard`); a runaway recursive CTE is stopped by the first cap it reaches,
not only by the timeout. In production, also run queries as a role with SELECT on
the three catalog tables only (``FASHION_QUERY_URL``; grants in helm/README.md): a third layer,
which the database enforces.

The caps hold whatever the rows look like (issue 22). A watchdog thread (:class:`_Watchdog`)
stops the statement when its time is up, when the process has grown past the memory cap, or when
SQLite's temporary files pass the temp cap: the databases' own checks miss work done inside one
function call (SQLite's progress handler counts VM steps) and across FETCHes (PostgreSQL's
``statement_timeout`` is per statement). Rows are fetched in batches sized for the largest row the
query could return (the longest value: ``FASHION_QUERY_MAX_VALUE_BYTES``, enforced by SQLite's
``SQLITE_LIMIT_LENGTH``, and on PostgreSQL by the server, per row, before it sends it), with the
memory checked between batches. PostgreSQL's temporary files: ``temp_file_limit``, set for the
transaction where the role may set it.

Why this module is long: it is the whole of what stands between a user's SQL and the catalog
(the check on paper, both databases' read-only execution, and the caps on what a query may
cost with the watchdog and batched fetching that hold them); kept in one place so that a review
of the sandbox reads one file.
"""

from __future__ import annotations

import decimal
import math
import os
import re
import resource
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import sqlglot
from sqlglot import exp

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_CHUNK_ROWS = 10_000
# Ids are 64-bit integers everywhere they are stored (the tables' BIGINT, the manifests' int64).
ID_MIN, ID_MAX = -(2**63), 2**63 - 1
FLOAT_EXACT = 2**53  # floats hold every integer up to this, and not all beyond
MAX_SQL_BYTES_ENV = "FASHION_QUERY_MAX_BYTES"
MAX_IDS_ENV = "FASHION_QUERY_MAX_IDS"
MAX_MEMORY_ENV = "FASHION_QUERY_MAX_MEMORY_MB"
MAX_VALUE_ENV = "FASHION_QUERY_MAX_VALUE_BYTES"
MAX_TEMP_ENV = "FASHION_QUERY_MAX_TEMP_MB"
TIMEOUT_SETTING = "query_timeout_s, or --timeout"  # where the time cap is set: asset config, command line
WATCH_S, WATCH_TEMP_S = 0.02, 0.1  # how often the watchdog looks at the clock and memory; at temporary files
# A fetched row is held up to ROW_COPIES times its values' bytes (the driver's copy, Python's str at
# up to 4 bytes a character), plus FIXED_BYTES a column (an integer, a date: its text and object).
ROW_COPIES, FIXED_BYTES = 5, 64
# PostgreSQL types whose values are short whatever the query does (bool, integers, oid, floats,
# money, date and time types, uuid): rows of these alone need no check of their size.
_PG_FIXED_TYPES = {16, 20, 21, 23, 26, 700, 701, 790, 1082, 1083, 1114, 1184, 1186, 1266, 2950}
_ROW_GUARD = "fashion-assets row guard: "  # what the server-side row check's error carries
# How long crash recovery waits for a writer's lock before leaving the file to the read-only path.
RECOVERY_BUSY_TIMEOUT_S = 5.0

# Functions that read or write the server's files, run other SQL, reach other servers, or change
# server state. Matched on the lower-cased name; prefixes end in "_".
_DENIED_FUNCTION_PREFIXES = ("pg_", "lo_", "dblink", "current_setting", "set_config")
_DENIED_FUNCTIONS = {
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "sqlite_compileoption_get",
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml", "table_to_xml",
    "database_to_xml", "schema_to_xml", "txid_current", "nextval", "setval", "version",
}
# Anything here, anywhere in the tree, means the statement is not a plain read.
_DENIED_NODES = (exp.DDL, exp.DML, exp.Command, exp.Into, exp.Lock, exp.Pragma, exp.Set, exp.Transaction,
                 exp.Commit, exp.Rollback, exp.Copy, exp.Attach, exp.Detach, exp.Use)
_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite"}


class SqlRejected(ValueError):
    """The statement is not a single read-only query returning ``id``; the message says why."""


class SqlTimeout(RuntimeError):
    """The query ran longer than the sandbox allows and was stopped."""


class SelectionTooLarge(SqlRejected):
    """The query selected more ids, or made the plan grow by more memory, than the limits allow."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one image query may cost, besides its time (``timeout_s``).

    ``max_sql_bytes``: the SQL text, in UTF-8 bytes (parsing 10 MB took 24 s and 1.9 GB).
    ``max_ids``: distinct ids one plan may select (the plan holds each: about 0.4 KB an image).
    ``max_memory_mb``: how much the planning process may grow while it plans (resident memory).
    ``max_value_bytes``: the longest string or blob a query may build (SQLite) or row it may
    return (PostgreSQL, as text): what one row may cost, and one function call may take.
    ``max_temp_mb``: the temporary files (sorts, hashes) a query may fill.
    The defaults allow the 10-million-image sets docs/scaling.md plans for, within the chart's
    4 GiB step limit; the ``FASHION_QUERY_*`` variables override them (:meth:`from_env`).
    """

    max_sql_bytes: int = 256 * 1024
    max_ids: int = 10_000_000
    max_memory_mb: float = 3_072.0
    max_value_bytes: int = 262_144
    max_temp_mb: float = 4_096.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SandboxLimits:
        """The limits the environment sets; unset (or empty) means the default. A value that is
        not a positive number fails naming the variable."""
        values = {}
        for attribute, variable, kind in (("max_sql_bytes", MAX_SQL_BYTES_ENV, int), ("max_ids", MAX_IDS_ENV, int),
                                          ("max_memory_mb", MAX_MEMORY_ENV, float),
                                          ("max_value_bytes", MAX_VALUE_ENV, int),
                                          ("max_temp_mb", MAX_TEMP_ENV, float)):
            raw = (environ.get(variable) or "").strip().replace("_", "")
            if not raw:
                continue
            try:
                value = kind(raw)
            except ValueError:
                value = 0
            if not value > 0:
                what = "a positive whole number" if kind is int else "a positive number"
                raise ValueError(f"{variable}={environ.get(variable)!r}: expected {what}")
            values[attribute] = value
        return cls(**values)


def _current_rss_mb() -> float:
    """Resident memory of this process now (Linux: /proc/self/statm); elsewhere the peak so far,
    which only makes the memory cap stricter."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class SelectionGuard:
    """Stops a plan that selects more ids, or grows by more memory, than ``limits`` allow.
    Created when planning starts (its memory is the baseline); :meth:`check` after each chunk."""

    def __init__(self, limits: SandboxLimits):
        self.limits = limits
        self.baseline_mb = _current_rss_mb()

    def check(self, ids: int) -> None:
        if ids > self.limits.max_ids:
            raise SelectionTooLarge(
                f"the query selected more than {self.limits.max_ids:,} ids, the limit ({MAX_IDS_ENV}); "
                "narrow it (a recursive CTE without an end?), or raise the limit")
        grown = _current_rss_mb() - self.baseline_mb
        if grown > self.limits.max_memory_mb:
            raise SelectionTooLarge(
                f"planning the set grew by {grown:,.1f} MB after {ids:,} ids, more than the limit of "
                f"{self.limits.max_memory_mb:,g} MB ({MAX_MEMORY_ENV}); narrow the query, or raise the limit")


def as_id(value: object) -> int:
    """A selected value as a product id: an integer (or a whole number of another type) that fits
    in 64 bits; anything else is refused, naming the value and the range. A float is taken only
    where it is exact (up to 2**53): SQLite turns an integer literal beyond 64 bits into a float,
    which would otherwise come back as a different id."""
    # Cut before repr: a 600 MB blob's repr would be 2.4 GB.
    shown = str(value) if isinstance(value, (int, float, decimal.Decimal)) else repr(
        value[:61] if isinstance(value, (str, bytes)) else value)
    if len(shown) > 30 and isinstance(value, (int, decimal.Decimal)):  # PostgreSQL writes 9e999 out in full
        shown = format(decimal.Decimal(value).normalize(), ".6g")
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    out_of_range = SqlRejected(f"the id column returned {shown}, outside the range of ids: 64-bit integers, "
                               f"from {ID_MIN:,} to {ID_MAX:,}")
    if isinstance(value, float) and (math.isinf(value) or abs(value) > ID_MAX):
        raise out_of_range
    if isinstance(value, float) and value.is_integer() and abs(value) > FLOAT_EXACT:
        raise SqlRejected(f"the id column returned {shown}, a floating-point number too large to be an exact id "
                          f"(ids are 64-bit integers, from {ID_MIN:,} to {ID_MAX:,}): select it as an integer")
    try:
        product_id = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        product_id = None
    if product_id is None or not (product_id == value or str(product_id) == str(value).strip()):
        raise SqlRejected(f"the id column must hold product ids (integers); it returned {shown}")
    if not ID_MIN <= product_id <= ID_MAX:
        raise out_of_range
    return product_id


def dialect_of(engine_or_url: sa.Engine | str) -> str:
    backend = (engine_or_url.dialect.name if isinstance(engine_or_url, sa.Engine)
               else sa.make_url(engine_or_url).get_backend_name())
    return _DIALECTS.get(backend, backend)


def _function_name(node: exp.Func) -> str:
    return (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def check_sql_size(size: int, max_bytes: int | None = None) -> None:
    """Refuse SQL text of ``size`` UTF-8 bytes when it is over the limit, before reading or
    parsing it."""
    limit = max_bytes if max_bytes is not None else SandboxLimits.from_env().max_sql_bytes
    if size > limit:
        raise SqlRejected(f"the query is {size:,} bytes, over the limit of {limit:,} ({MAX_SQL_BYTES_ENV})")


def validate_sql(sql: str, dialect: str = "sqlite", max_bytes: int | None = None) -> str:
    """Return the statement without a trailing ``;`` if it is one read-only query, else raise.
    ``max_bytes``: the size limit (default: :class:`SandboxLimits` from the environment)."""
    check_sql_size(len(sql.encode("utf-8", "surrogatepass")), max_bytes)
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: bytes that were not UTF-8 (argv, a file)
        raise SqlRejected(f"the query is not UTF-8 text: character {exc.start + 1} is not a character") from None
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise SqlRejected("the query is empty")
    try:
        statements = [s for s in sqlglot.parse(text, read=dialect) if s is not None]
    except RecursionError:  # sqlglot's parser recurses once per level: ~46 nested parentheses
        raise SqlRejected("the query is nested too deeply to check (about 45 levels of parentheses, "
                          "subqueries or operators); flatten it, e.g. with a WITH clause") from None
    except sqlglot.errors.ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" at line {first.get('line')}, column {first.get('col')}" if first.get("line") else ""
        raise SqlRejected(f"the query does not parse{where}: {first.get('description', exc)}") from None
    except sqlglot.errors.SqlglotError as exc:  # TokenError: an unterminated string or comment...
        raise SqlRejected(f"the query does not parse: {str(exc).splitlines()[0][:200]}") from None
    if len(statements) != 1:
        raise SqlRejected(f"expected exactly one statement, found {len(statements)}")
    [tree] = statements
    if not isinstance(tree, exp.Query):
        raise SqlRejected(f"only SELECT (or WITH ... SELECT) is allowed, not {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, _DENIED_NODES):
            what = {"into": "SELECT INTO", "lock": "FOR UPDATE/SHARE"}.get(node.key, node.key.upper())
            raise SqlRejected(f"only reading is allowed: the query contains {what}")
        if isinstance(node, exp.Func):
            name = _function_name(node)
            if name in _DENIED_FUNCTIONS or name.startswith(_DENIED_FUNCTION_PREFIXES):
                raise SqlRejected(f"function {name}() is not allowed in image queries")
    return text


@dataclass
class QueryStats:
    rows: int = 0
    chunks: int = 0
    max_chunk: int = 0
    seconds: float = 0.0


class SqlSandbox:
    """Runs validated queries read-only against ``engine``'s database."""

    def __init__(self, engine: sa.Engine, timeout_s: float = DEFAULT_TIMEOUT_S, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 limits: SandboxLimits | None = None):
        """``limits``: default :meth:`SandboxLimits.from_env`."""
        self.engine = engine
        self.timeout_s = timeout_s
        self.chunk_rows = chunk_rows
        self.limits = limits if limits is not None else SandboxLimits.from_env()
        self.dialect = dialect_of(engine)
        if self.dialect not in ("postgres", "sqlite"):
            raise SqlRejected(f"image queries run on PostgreSQL or SQLite, not {engine.dialect.name}")

    def validate(self, sql: str) -> str:
        return validate_sql(sql, self.dialect, self.limits.max_sql_bytes)

    def guard(self) -> SelectionGuard:
        """A fresh :class:`SelectionGuard` for one plan, with this sandbox's limits."""
        return SelectionGuard(self.limits)

    def id_index(self, columns: list[str]) -> int | None:
        """Where the ``id`` column is, matched as the database matches names: SQLite ignores case
        (``SELECT id AS ID`` returns ``ID``); PostgreSQL has already folded unquoted names to
        lower case, so there only ``id`` is ``id`` (``AS "ID"`` is another column)."""
        if "id" in columns:
            return columns.index("id")
        if self.dialect == "sqlite":
            return next((i for i, c in enumerate(columns) if c.lower() == "id"), None)
        return None

    def columns(self, sql: str) -> list[str]:
        """The query's column names, checked by the database without reading rows; must include ``id``."""
        text = self.validate(sql)
        # The closing parenthesis on a line of its own: a query may end in a -- comment.
        with self._cursor(f"SELECT * FROM ({text}\n) AS image_query LIMIT 0") as (columns, _fetch):
            return columns

    def stream(self, sql: str, stats: QueryStats | None = None) -> Iterator[tuple[list[str], list[tuple]]]:
        """Yield ``(columns, rows)`` chunks of at most ``chunk_rows`` rows."""
        text = self.validate(sql)
        stats = stats if stats is not None else QueryStats()
        started = time.monotonic()
        with self._cursor(text) as (columns, fetch):
            while rows := fetch(self.chunk_rows):
                stats.rows += len(rows)
                stats.chunks += 1
                stats.max_chunk = max(stats.max_chunk, len(rows))
                yield columns, rows
        stats.seconds = time.monotonic() - started

    @contextmanager
    def _cursor(self, statement: str) -> Iterator[tuple[list[str], Callable[[int], list[tuple]]]]:
        """Open ``statement`` read-only; yield its columns and a fetch-n-rows function."""
        opened = self._postgres_cursor if self.dialect == "postgres" else self._sqlite_cursor
        with opened(statement) as (columns, fetch):
            if self.id_index(columns) is None:
                raise SqlRejected(
                    f"the query must return a column named id; it returns {', '.join(columns) or 'nothing'}"
                )
            yield columns, fetch

    def _bounded(self, fetch: Callable[[int], list], row_bytes: int, watchdog: _Watchdog) -> Callable[[int], list]:
        """``fetch`` in batches small enough that the memory cap is checked before one batch could
        pass it, each row taken to be as large as it may be (``row_bytes``)."""
        cap = self.limits.max_memory_mb * 2**20

        def fetch_rows(n: int) -> list:
            rows: list = []
            while len(rows) < n:
                headroom = cap - watchdog.check()
                batch = max(1, min(n - len(rows), int(headroom // (2 * row_bytes))))
                got = fetch(batch)
                rows += got
                if len(got) < batch:
                    break
            watchdog.check()
            return rows

        return fetch_rows

    @contextmanager
    def _postgres_cursor(self, statement: str):
        from sqlalchemy.exc import DBAPIError

        timeout_ms = max(1, int(self.timeout_s * 1000))
        watchdog = None
        try:
            with self.engine.connect().execution_options(postgresql_readonly=True) as conn, conn.begin():
                conn.execute(sa.text(f"SET LOCAL statement_timeout = {timeout_ms}"))
                temp_kb = max(1, int(self.limits.max_temp_mb * 1024))
                try:  # a role may not set it (before PostgreSQL 15, only a superuser): the server's value holds
                    with conn.begin_nested():
                        conn.execute(sa.text(f"SET LOCAL temp_file_limit = {temp_kb}"))
                except DBAPIError:
                    pass
                probe = conn.execute(sa.text(f"SELECT * FROM ({statement}\n) AS image_query LIMIT 0"))
                probe = probe.cursor.description
                row_bytes = FIXED_BYTES * len(probe)
                if any(column.type_code not in _PG_FIXED_TYPES for column in probe):
                    # The server measures each row as text and refuses one over the limit before sending it.
                    row_bytes += ROW_COPIES * self.limits.max_value_bytes
                    size = "octet_length(image_query::text)"
                    statement = (f"SELECT * FROM ({statement}\n) AS image_query WHERE CASE WHEN {size} <= "
                                 f"{self.limits.max_value_bytes} THEN true ELSE ('{_ROW_GUARD}' || {size})::integer "
                                 "IS NULL END")
                with _Watchdog(self, conn.connection.dbapi_connection.cancel) as watchdog:
                    # stream_results: a named (server-side) cursor, fetched batch by batch.
                    result = conn.execution_options(stream_results=True, max_row_buffer=self.chunk_rows).execute(
                        sa.text(statement)
                    )
                    yield list(result.keys()), self._bounded(
                        lambda n: [tuple(r) for r in result.fetchmany(n)], row_bytes, watchdog)
        except DBAPIError as exc:
            code = getattr(exc.orig, "pgcode", None)
            message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if watchdog is not None and watchdog.tripped is not None:
                raise watchdog.tripped from None
            if code == "57014":  # query_canceled: statement_timeout fired
                raise SqlTimeout(_timeout_message(self.timeout_s)) from None
            if code == "25006":  # read_only_sql_transaction
                raise SqlRejected("only reading is allowed: the database refused a write") from None
            if code == "53400" and "temp_file_limit" in message:  # configuration_limit_exceeded
                raise SelectionTooLarge(_temp_message(self.limits.max_temp_mb)) from None
            if code == "22P02" and _ROW_GUARD in message:
                size = int(re.search(_ROW_GUARD + r"(\d+)", message).group(1))
                raise SelectionTooLarge(
                    f"the query returned a row of {size:,} bytes, more than the limit of "
                    f"{self.limits.max_value_bytes:,} ({MAX_VALUE_ENV}); select less, or raise the limit") from None
            raise SqlRejected(f"the database rejected the query: {message}") from None

    def _sqlite_value_limit(self, columns: int) -> int:
        """The longest string or blob: ``max_value_bytes``, lowered for a query of many columns so
        that a row at its largest stays within half the memory cap (never below 1 KiB)."""
        share = int(self.limits.max_memory_mb * 2**20 / (2 * ROW_COPIES * max(1, columns)))
        return max(1024, min(self.limits.max_value_bytes, share))

    @contextmanager
    def _sqlite_cursor(self, statement: str):
        path = self.engine.url.database
        if not path or path == ":memory:":
            raise SqlRejected("image queries need a file-backed SQLite catalog")
        _recover_sqlite_hot_journal(path)
        # A separate connection that SQLite itself opens read-only, not read-only by convention. The
        # path is percent-encoded (as_uri): a '#', '?' or '%' in it would otherwise end the path
        # early, losing mode=ro and opening (creating) another file.
        conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True, timeout=30)
        watch_temp = os.path.isdir("/proc/self/fd")
        if not watch_temp:  # temporary files cannot be watched: keep them in memory, under the memory cap
            conn.execute("PRAGMA temp_store = MEMORY")
        conn.set_authorizer(_sqlite_authorizer)
        watchdog = _Watchdog(self, conn.interrupt, sqlite_temp=watch_temp)
        value_bytes = self.limits.max_value_bytes
        try:
            with watchdog:
                probe = conn.execute(f"SELECT * FROM ({statement}\n) AS image_query LIMIT 0")
                width = len(probe.description or ())
                probe.close()
                value_bytes = self._sqlite_value_limit(width)
                conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_bytes)  # every string, blob and record it builds
                cursor = conn.execute(statement)
                yield [d[0] for d in cursor.description or []], self._bounded(
                    cursor.fetchmany, max(1, width) * (ROW_COPIES * value_bytes + FIXED_BYTES), watchdog)
        except sqlite3.DatabaseError as exc:
            if watchdog.tripped is not None:
                raise watchdog.tripped from None
            if "string or blob too big" in str(exc):
                lowered = (f", lowered for its {width:,} columns so that a row fits in {MAX_MEMORY_ENV}"
                           if value_bytes < self.limits.max_value_bytes else "")
                raise SelectionTooLarge(
                    f"the query built a string or blob longer than {value_bytes:,} bytes, the limit ({MAX_VALUE_ENV}"
                    f"{lowered}); select less, or raise the limit") from None
            if "not authorized" in str(exc) or "readonly" in str(exc):
                raise SqlRejected(f"only reading is allowed: the database refused it ({exc})") from None
            raise SqlRejected(f"the database rejected the query: {exc}") from None
        finally:
            conn.close()


def _timeout_message(timeout_s: float) -> str:
    return f"the query ran longer than {timeout_s:g}s and was stopped (the time limit: {TIMEOUT_SETTING})"


def _temp_message(max_temp_mb: float, used_mb: float | None = None) -> str:
    used = f"grew to {used_mb:,.1f} MB, more than" if used_mb is not None else "reached"
    return (f"the query's temporary files {used} the limit of {max_temp_mb:,g} MB ({MAX_TEMP_ENV}); narrow "
            "the query (a sort over a join?), or raise the limit")


def _sqlite_temp_bytes() -> int:
    """Disk space of the SQLite temporary files open in this process (Linux). SQLite names them
    ``etilqs_*`` and unlinks each as it opens it, so only open descriptors show them."""
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("etilqs_"):
                total += os.stat(f"/proc/self/fd/{fd}").st_blocks * 512
        except OSError:  # closed meanwhile
            continue
    return total


class _Watchdog:
    """A thread that stops the running statement (``interrupt``: ``sqlite3.Connection.interrupt``
    or psycopg2's ``cancel``) when the query's time is up, when this process has grown by more than
    the memory cap since the query opened, or when SQLite's temporary files have grown by more than
    the temp cap. What stopped it is :attr:`tripped`; :meth:`check`, between fetches (where no
    statement runs to be interrupted), raises it, or finds it first."""

    def __init__(self, sandbox: SqlSandbox, interrupt: Callable[[], None], sqlite_temp: bool = False):
        self.timeout_s, self.limits, self.interrupt = sandbox.timeout_s, sandbox.limits, interrupt
        self.deadline = time.monotonic() + sandbox.timeout_s
        self.baseline_mb = _current_rss_mb()
        self.temp_baseline = _sqlite_temp_bytes() if sqlite_temp else None
        self.tripped: SqlTimeout | SelectionTooLarge | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="query-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()  # before the connection closes or goes back to the pool: no late cancel

    def over(self, temp: bool = False) -> tuple[float, SqlTimeout | SelectionTooLarge | None]:
        """``(bytes grown, the cap passed or None)``."""
        grown = (_current_rss_mb() - self.baseline_mb) * 2**20
        if time.monotonic() > self.deadline:
            return grown, SqlTimeout(_timeout_message(self.timeout_s))
        if grown > self.limits.max_memory_mb * 2**20:
            return grown, SelectionTooLarge(
                f"planning the set grew by {grown / 2**20:,.1f} MB while the query ran, more than the limit of "
                f"{self.limits.max_memory_mb:,g} MB ({MAX_MEMORY_ENV}); narrow the query, or raise the limit")
        if temp and self.temp_baseline is not None:
            used_mb = (_sqlite_temp_bytes() - self.temp_baseline) / 2**20
            if used_mb > self.limits.max_temp_mb:
                return grown, SelectionTooLarge(_temp_message(self.limits.max_temp_mb, used_mb))
        return grown, None

    def check(self) -> float:
        """The bytes this process has grown by; raises the cap that was passed, if one was."""
        grown, passed = self.over()
        self.tripped = self.tripped or passed
        if self.tripped is not None:
            raise self.tripped
        return grown

    def _watch(self) -> None:
        next_temp = 0.0
        while not self._done.wait(WATCH_S):
            look_at_temp = time.monotonic() >= next_temp
            if look_at_temp:
                next_temp = time.monotonic() + WATCH_TEMP_S
            _, passed = self.over(look_at_temp)
            if passed is not None:
                self.tripped = self.tripped or passed
                try:
                    self.interrupt()
                except Exception:  # noqa: BLE001 - the statement ended meanwhile; check() raises it anyway
                    pass
                return


def sqlite_uri(path: str, mode: str) -> str:
    """A ``file:`` URI for the SQLite file ``path`` opened in ``mode`` (``ro``: SQLite refuses every
    write; ``rw``: never creates the file). The path is absolute and percent-encoded, so a '#',
    '?', '%' or space in a folder's name stays part of the path."""
    return f"{Path(path).absolute().as_uri()}?mode={mode}"


def _recover_sqlite_hot_journal(path: str, busy_timeout_s: float = RECOVERY_BUSY_TIMEOUT_S) -> None:
    """Roll back what a crashed writer left behind, so the read-only connection can read.

    A writer killed mid-transaction leaves a hot ``<db>-journal`` (or, in WAL mode, a ``-wal``
    file). SQLite rolls it back on the next read of the file, but only from a connection that may
    write: a ``mode=ro`` connection fails with "attempt to write a readonly database" instead, so
    without this every sandbox query fails until some writer happens to open the catalog.

    So when such a file is there and non-empty, open one ordinary read-write connection and read
    the schema cookie (``PRAGMA schema_version``): taking the shared lock for that read is what
    makes SQLite play back a hot journal. A read, not ``BEGIN IMMEDIATE``, so a live writer's
    transaction is not waited out (its journal is not hot: it holds a lock). The connection runs
    nothing of the user's, and a writer's own crash recovery changes no committed data. If the
    database is busy or anything else goes wrong, give up quietly: the read-only open that follows
    reports whatever is really wrong. ``mode=rw`` never creates a missing file.
    """
    if not any(os.path.isfile(f"{path}{suffix}") and os.path.getsize(f"{path}{suffix}") > 0
               for suffix in ("-journal", "-wal")):
        return
    try:
        conn = sqlite3.connect(sqlite_uri(path, "rw"), uri=True, timeout=busy_timeout_s)
    except sqlite3.Error:
        return
    try:
        conn.execute("PRAGMA schema_version").fetchall()
    except sqlite3.Error:
        pass
    finally:
        conn.close()


_SQLITE_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}


def _sqlite_authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
    if action in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        name = (arg2 or "").lower()
        return sqlite3.SQLITE_DENY if name in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY

