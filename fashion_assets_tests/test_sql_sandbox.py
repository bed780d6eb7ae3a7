"""The SQL sandbox: what it refuses, on paper and in the database, and how it streams."""

import hashlib

import dagster as dg
import pytest
import sqlalchemy as sa

from fashion_assets.catalog.assets import product_images, products
from fashion_assets.catalog.tables import products as products_table
from fashion_assets.image_sets.sandbox import QueryStats, SqlRejected, SqlSandbox, SqlTimeout, validate_sql

from .catalog_files import make_dataset

HOSTILE = {
    "drop": "DROP TABLE products",
    "delete": "DELETE FROM products",
    "update": "UPDATE products SET year = 1900",
    "insert": "INSERT INTO products (id) VALUES (424242)",
    "create_as": "CREATE TABLE stolen AS SELECT id FROM products",
    "two_statements": "SELECT id FROM products; DELETE FROM products",
    "modifying_cte": "WITH d AS (DELETE FROM products RETURNING id) SELECT id FROM d",
    "modifying_cte_update": "WITH u AS (UPDATE products SET year = 1 RETURNING id) SELECT id FROM u",
    "attach": "ATTACH DATABASE '/tmp/evil.db' AS evil",
    "pragma": "PRAGMA writable_schema = 1",
    "vacuum_into": "VACUUM INTO '/tmp/copy.db'",
    "copy": "COPY products TO '/tmp/products.csv'",
    "copy_program": "COPY (SELECT id FROM products) TO PROGRAM 'touch /tmp/pwned'",
    "pg_read_file": "SELECT pg_read_file('/etc/passwd') AS id",
    "pg_ls_dir": "SELECT pg_ls_dir('.') AS id",
    "lo_import": "SELECT lo_import('/etc/passwd') AS id",
    "sqlite_readfile": "SELECT readfile('/etc/passwd') AS id",
    "load_extension": "SELECT load_extension('/tmp/evil.so') AS id",
    "query_to_xml": "SELECT query_to_xml('DELETE FROM products RETURNING id', true, true, '') AS id",
    "select_into": "SELECT id INTO stolen FROM products",
    "for_update": "SELECT id FROM products FOR UPDATE",
    "set_config": "SELECT set_config('default_transaction_read_only', 'off', false) AS id",
    "unparseable": "SELEC id FROM products",
    "unterminated_string": "SELECT id FROM products WHERE gender = 'Men",
    "nested_too_deeply": "SELECT id FROM products WHERE " + "(" * 60 + "id > 0" + ")" * 60,
    "empty": "  ;  ",
}


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_statements_are_rejected_before_they_run(dialect, name):
    with pytest.raises(SqlRejected):
        validate_sql(HOSTILE[name], dialect)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM products WHERE master_category = 'Apparel' AND gender = 'Women' AND season = 'Summer'",
        "select p.id, p.gender from products p join product_images i using (id) where p.year >= 2012 limit 10;",
        "WITH recent AS (SELECT id, year FROM products WHERE year > 2015) SELECT id FROM recent ORDER BY year",
        "SELECT id FROM products WHERE article_type = 'Watches' UNION SELECT id FROM products WHERE usage = 'Formal'",
        "SELECT id, count(*) OVER (PARTITION BY article_type) AS n FROM products",
        "-- a comment first\nSELECT id FROM products",
    ],
)
def test_ordinary_queries_pass(sql):
    for dialect in ("postgres", "sqlite"):
        assert validate_sql(sql, dialect).startswith(("SELECT", "select", "WITH", "--"))


def test_rejections_say_why():
    with pytest.raises(SqlRejected, match="exactly one statement, found 2"):
        validate_sql(HOSTILE["two_statements"], "postgres")
    with pytest.raises(SqlRejected, match="contains DELETE"):
        validate_sql(HOSTILE["modifying_cte"], "postgres")
    with pytest.raises(SqlRejected, match=r"function pg_read_file\(\) is not allowed"):
        validate_sql(HOSTILE["pg_read_file"], "postgres")
    with pytest.raises(SqlRejected, match="does not parse at line 1"):
        validate_sql(HOSTILE["unparseable"], "postgres")
    with pytest.raises(SqlRejected, match="SELECT INTO"):
        validate_sql(HOSTILE["select_into"], "postgres")
    with pytest.raises(SqlRejected, match="does not parse: Error tokenizing"):
        validate_sql(HOSTILE["unterminated_string"], "sqlite")
    with pytest.raises(SqlRejected, match="nested too deeply to check"):
        validate_sql(HOSTILE["nested_too_deeply"], "postgres")


def _catalog(backend, tmp_path):
    result = dg.materialize([products, product_images], resources=backend.resources(make_dataset(tmp_path / "ds")))
    assert result.success
    return backend.engine()


def _fingerprint(engine) -> str:
    """Every row of every catalog table, and the schema: changes if anything was written."""
    digest = hashlib.sha256()
    inspector = sa.inspect(engine)
    digest.update(repr(sorted(inspector.get_table_names())).encode())
    with engine.connect() as conn:
        for table in ("products", "product_images"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY id")):
                digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def test_hostile_statements_change_nothing_in_the_database(backend, tmp_path):
    engine = _catalog(backend, tmp_path)
    sandbox = SqlSandbox(engine, timeout_s=5)
    before = _fingerprint(engine)
    sqlite_file = engine.url.database if engine.dialect.name == "sqlite" else None
    file_before = open(sqlite_file, "rb").read() if sqlite_file else None
    for name, sql in HOSTILE.items():
        with pytest.raises(SqlRejected):
            list(sandbox.stream(sql))
        # The second layer on its own: the database refuses writes even if validation were skipped.
        writes = ["delete", "update", "insert", "drop", "create_as"]
        if engine.dialect.name == "postgresql":  # SQLite has no data-modifying CTEs at all
            writes += ["modifying_cte", "modifying_cte_update", "select_into"]
        if name in writes:
            # (PostgreSQL's server-side cursor refuses anything but a query even before READ ONLY does.)
            refused = "only reading is allowed|the database rejected"
            with pytest.raises(SqlRejected, match=refused), sandbox._cursor(sql) as (_cols, fetch):
                fetch(1)
    assert _fingerprint(engine) == before
    if sqlite_file:
        assert open(sqlite_file, "rb").read() == file_before  # byte for byte


def test_long_queries_are_stopped(backend, tmp_path):
    engine = _catalog(backend, tmp_path)
    forever = "WITH RECURSIVE n(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM n) SELECT id FROM n WHERE id < 0"
    with pytest.raises(SqlTimeout, match="longer than 1s"):
        list(SqlSandbox(engine, timeout_s=1).stream(forever))


def test_columns_are_checked_by_the_database(backend, tmp_path):
    sandbox = SqlSandbox(_catalog(backend, tmp_path))
    assert sandbox.columns("SELECT id, gender FROM products") == ["id", "gender"]
    with pytest.raises(SqlRejected, match="must return a column named id; it returns gender"):
        sandbox.columns("SELECT gender FROM products")
    with pytest.raises(SqlRejected, match="the database rejected the query"):
        sandbox.columns("SELECT id FROM no_such_table")


def test_a_hundred_thousand_ids_stream_in_bounded_chunks(backend, tmp_path):
    engine = _catalog(backend, tmp_path)
    with engine.begin() as conn:
        conn.execute(products_table.insert(), [{"id": 1_000_000 + i, "gender": "Men"} for i in range(100_000)])
    stats = QueryStats()
    sandbox = SqlSandbox(engine, chunk_rows=10_000)
    seen = 0
    for columns, rows in sandbox.stream("SELECT id FROM products WHERE id >= 1000000", stats):
        assert columns == ["id"] and len(rows) <= 10_000
        seen += len(rows)
    # Never more than one chunk in hand: 10 chunks of 10,000, not one list of 100,000.
    assert seen == stats.rows == 100_000 and stats.chunks == 10 and stats.max_chunk == 10_000
