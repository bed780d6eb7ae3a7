"""A writer that crashes mid-transaction on the SQLite catalog must not break image queries."""

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

import fashion_assets.catalog.tables as catalog_tables
from fashion_assets.core.database import create_engine, ensure_schema
from fashion_assets.image_sets.sandbox import SqlRejected, SqlSandbox, sqlite_uri

# Opens the catalog like any writer, changes every product and spills enough pages that both the
# journal and the database file are written, then waits to be killed mid-transaction.
CRASHING_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size = 10")  # tiny cache: changed pages are written to the file early
conn.execute("BEGIN")
conn.execute("DELETE FROM products")
conn.executemany("INSERT INTO products (id, product_display_name) VALUES (?, ?)",
                 [(i, "x" * 200) for i in range(100, 20_000)])
print("ready", flush=True)
time.sleep(120)
"""


def _crash_a_writer(path: str) -> None:
    writer = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()


def test_sandbox_reads_pre_crash_rows_after_a_writer_is_killed_mid_transaction(tmp_path):
    """A writer SIGKILLed mid-transaction leaves a hot journal that a read-only connection cannot
    roll back; the sandbox recovers it first, returns exactly the committed rows, and still
    refuses writes."""
    path = str(tmp_path / "catalog.db")
    engine = create_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    with engine.begin() as conn:
        conn.execute(catalog_tables.products.insert(), [{"id": i, "gender": "Women"} for i in (1, 2, 3)])
    engine.dispose()

    _crash_a_writer(path)
    journal = f"{path}-journal"
    assert os.path.isfile(journal) and os.path.getsize(journal) > 0  # the crash state: a hot journal
    # Without recovery, a read-only connection cannot read the file at all (the bug).
    plain_read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        plain_read_only.execute("SELECT id FROM products").fetchall()
    plain_read_only.close()

    sandbox = SqlSandbox(create_engine(f"sqlite:///{path}"), timeout_s=5)
    ids = [row[0] for _columns, rows in sandbox.stream("SELECT id FROM products ORDER BY id") for row in rows]
    assert ids == [1, 2, 3]  # the crashed transaction was rolled back
    assert not os.path.exists(journal) or os.path.getsize(journal) == 0
    # Recovery did not make the catalog writable the way the sandbox opens it: a write is refused
    # (here by the parser already: the sandbox first probes the statement as a subquery), and the
    # read-only URI the sandbox connects with refuses it at the database itself.
    with pytest.raises(SqlRejected, match='near "DELETE": syntax error'), \
            sandbox._cursor("DELETE FROM products") as (_, f):
        f(1)
    as_the_sandbox_opens_it = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        as_the_sandbox_opens_it.execute("DELETE FROM products")
    as_the_sandbox_opens_it.close()
    assert [row[0] for _c, rows in sandbox.stream("SELECT id FROM products ORDER BY id") for row in rows] == [1, 2, 3]
