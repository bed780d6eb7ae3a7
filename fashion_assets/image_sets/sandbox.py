"""Run a user's SELECT against the catalog, and nothing else. Plain module: no Dagster.

Two layers, so one mistake in either is not enough to change the catalog:

1. The statement is parsed (sqlglot, in the database's dialect) and must be exactly one
   read-only query: SELECT, or WITH ... SELECT, or a UNION of them, with no data-modifying CTE,
   no SELECT INTO, no row locks, and no function that reaches the server's files or processes.
   DDL, DML, ATTACH, PRAGMA, VACUUM INTO, COPY and anything that does not parse are refused.
2. The database enforces read-only execution itself: PostgreSQL runs it in a READ ONLY
   transaction with ``statement_timeout``; SQLite opens the file with ``mode=ro`` and an
   authorizer that allows reading only, with a progress handler as the timeout. (Before that
   open, a crashed writer's hot journal is rolled back, which a read-only connection cannot do.)

Rows are streamed in chunks (a server-side cursor on PostgreSQL), so a query selecting millions
of ids never holds them all in memory. What a query may cost is capped (:class:`SandboxLimits`,
from ``FASHION_QUERY_*`` variables): the SQL text's size (checked before parsing), how deeply it
nests (the parser's recursion), the distinct ids a plan may select, and the memory the plan may
grow by (:class:`SelectionGuard`); a runaway recursive CTE is stopped by the first cap it reaches,
not only by the timeout. In production, also run queries as a role with SELECT on
the three catalog tables only (``FASHION_QUERY_URL``; grants in helm/README.md): a third layer,
which the database enforces.

Why this module is long: it is the whole of what stands between a user's SQL and the catalog
(the check on paper, both databases' read-only execution, and the caps on what a query may
cost); kept in one place so that a review of the sandbox reads one file.
"""

from __future__ import annotations

import decimal
import math
import os
import resource
import sqlite3
import sys
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
    The defaults allow the 10-million-image sets docs/scaling.md plans for, within the chart's
    4 GiB step limit; the ``FASHION_QUERY_*`` variables override them (:meth:`from_env`).
    """

    max_sql_bytes: int = 256 * 1024
    max_ids: int = 10_000_000
    max_memory_mb: float = 3_072.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SandboxLimits:
        """The limits the environment sets; unset (or empty) means the default. A value that is
        not a positive number fails naming the variable."""
        values = {}
        for attribute, variable, kind in (("max_sql_bytes", MAX_SQL_BYTES_ENV, int), ("max_ids", MAX_IDS_ENV, int),
                                          ("max_memory_mb", MAX_MEMORY_ENV, float)):
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
    shown = str(value) if isinstance(value, (int, float, decimal.Decimal)) else repr(value)
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
        with self._cursor(f"SELECT * FROM ({text}) AS image_query LIMIT 0") as (columns, _fetch):
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

    @contextmanager
    def _postgres_cursor(self, statement: str):
        from sqlalchemy.exc import DBAPIError

        timeout_ms = max(1, int(self.timeout_s * 1000))
        try:
            with self.engine.connect().execution_options(postgresql_readonly=True) as conn, conn.begin():
                conn.execute(sa.text(f"SET LOCAL statement_timeout = {timeout_ms}"))
                # stream_results: a named (server-side) cursor, fetched chunk by chunk.
                result = conn.execution_options(stream_results=True, max_row_buffer=self.chunk_rows).execute(
                    sa.text(statement)
                )
                yield list(result.keys()), lambda n: [tuple(r) for r in result.fetchmany(n)]
        except DBAPIError as exc:
            code = getattr(exc.orig, "pgcode", None)
            if code == "57014":  # query_canceled: statement_timeout fired
                raise SqlTimeout(f"the query ran longer than {self.timeout_s:g}s and was stopped") from None
            if code == "25006":  # read_only_sql_transaction
                raise SqlRejected("only reading is allowed: the database refused a write") from None
            message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise SqlRejected(f"the database rejected the query: {message}") from None

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
        deadline = time.monotonic() + self.timeout_s
        timed_out = False

        def over_time() -> int:
            nonlocal timed_out
            timed_out = time.monotonic() > deadline
            return 1 if timed_out else 0

        conn.set_authorizer(_sqlite_authorizer)
        conn.set_progress_handler(over_time, 10_000)
        try:
            cursor = conn.execute(statement)
            yield [d[0] for d in cursor.description or []], cursor.fetchmany
        except sqlite3.DatabaseError as exc:
            if timed_out:
                raise SqlTimeout(f"the query ran longer than {self.timeout_s:g}s and was stopped") from None
            if "not authorized" in str(exc) or "readonly" in str(exc):
                raise SqlRejected(f"only reading is allowed: the database refused it ({exc})") from None
            raise SqlRejected(f"the database rejected the query: {exc}") from None
        finally:
            conn.close()


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

