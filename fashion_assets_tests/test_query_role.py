"""FASHION_QUERY_URL: users' SQL runs as a PostgreSQL role that may only SELECT from the catalog's
published tables, on a real server.

The writer (FASHION_CATALOG_URL) ingests and takes the partition leases; the reader is created
with the SQL that helm/README.md documents (section 2), run as it is written there. The sandbox
would refuse a write on its own; here the statements are ones it accepts, so every refusal shown
comes from the database.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from fashion_assets.catalog.assets import product_images, products
from fashion_assets.image_sets.assets import image_queries, image_set, image_set_matches_manifest
from fashion_assets.image_sets.export import read_manifest
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.image_sets.sandbox import SandboxLimits, SelectionTooLarge, SqlRejected, SqlSandbox
from fashion_assets.resources import CatalogDatabase

from .catalog_files import make_dataset
from .test_cli import BIN, run

HELM_README = Path(__file__).resolve().parents[1] / "helm" / "README.md"
READER_TABLES = {"products", "product_images", "predictions"}
APPAREL_SQL = "SELECT id, article_type FROM products WHERE master_category = 'Apparel'"
APPAREL_IDS = {1, 4, 5, 8, 9}  # make_dataset: ids 1, 4, 5, 8, 9, 12 are Apparel; 12's image is rejected
SECRET_SQL = "SELECT id FROM secret_table"
# Past 1 MB of temporary files on the server (work_mem 4 MB): the function's tuplestore and the sort spill.
SPILL_ROWS = 300_000
SPILL_SQL = f"SELECT g AS id FROM generate_series(1, {SPILL_ROWS}) AS g ORDER BY g DESC"
LEASES_SQL = "SELECT run_id AS id FROM partition_leases"


def documented_reader_sql(role: str, password: str, database: str) -> list[str]:
    """The reader's block of helm/README.md, for this role, password and database."""
    blocks = re.findall(r"```sql\n(.*?)```", HELM_README.read_text(), re.S)
    [block] = [b for b in blocks if "CREATE ROLE fashion_reader" in b]
    sql = re.sub(r"--[^\n]*", "", block)
    sql = re.sub(r"PASSWORD '[^']*'", f"PASSWORD '{password}'", sql)
    sql = re.sub(r"\bDATABASE catalog\b", f'DATABASE "{database}"', sql)
    sql = re.sub(r"\bfashion_reader\b", role, sql)
    return [s.strip() for s in sql.split(";") if s.strip()]


@dataclass
class Roles:
    """An ingested catalog on PostgreSQL, its writer URL and a reader role made as documented."""

    backend: object
    resources: dict
    instance: dg.DagsterInstance
    writer_url: str
    reader_url: str
    reader_password: str
    role: str

    def catalog_db(self) -> CatalogDatabase:
        return CatalogDatabase(url=self.writer_url, query_url=self.reader_url)

    def count(self, sql: str) -> int:
        with self.backend.engine().connect() as conn:
            return conn.execute(sa.text(sql)).scalar_one()


@pytest.fixture
def roles(production, tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    resources = production.resources(dataset)
    instance = dg.DagsterInstance.ephemeral()
    # The writer ingests into a fresh database, creating every table (predictions and
    # partition_leases too) on first use.
    assert dg.materialize([products, product_images], resources=resources, instance=instance).success

    writer_url = production.catalog_url
    database = make_url(writer_url).database
    role = "fashion_reader_" + uuid.uuid4().hex[:10]
    password = "rd-" + secrets.token_hex(12)
    admin = sa.create_engine(writer_url, isolation_level="AUTOCOMMIT")  # the test's writer is the superuser
    with admin.connect() as conn:
        # A table outside the grants, with rows the writer can see.
        conn.exec_driver_sql("CREATE TABLE secret_table (id bigint)")
        conn.exec_driver_sql("INSERT INTO secret_table VALUES (1), (2)")
        for statement in documented_reader_sql(role, password, database):
            conn.exec_driver_sql(statement)
    reader_url = make_url(writer_url).set(username=role, password=password).render_as_string(hide_password=False)
    yield Roles(production, resources, instance, writer_url, reader_url, password, role)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP OWNED BY {role}")  # its grants, here and on the database
        conn.exec_driver_sql(f"DROP ROLE {role}")
    admin.dispose()


def reader_engine(roles: Roles) -> sa.Engine:
    return sa.create_engine(roles.reader_url)


def materialize_set(roles: Roles, name: str, sql: str, catalog_db: CatalogDatabase):
    QueryRegistry(roles.backend.store()).put(name, sql)
    roles.instance.add_dynamic_partitions(image_queries.name, [name])
    return dg.materialize([image_set, image_set_matches_manifest], partition_key=name,
                          resources={**roles.resources, "catalog_db": catalog_db}, instance=roles.instance,
                          raise_on_error=False)


def test_the_documented_grants_give_the_reader_select_on_three_tables_and_nothing_else(roles):
    """What helm/README.md's SQL gives the reader, read back from PostgreSQL's catalogs (and SET
    on temp_file_limit, the one parameter it may set)."""
    with roles.backend.engine().connect() as conn:
        grants = set(conn.execute(sa.text(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants WHERE grantee = :r"),
            {"r": roles.role}))
        rights = conn.execute(sa.text(
            "SELECT has_database_privilege(:r, current_database(), 'CONNECT'),"
            "       has_database_privilege(:r, current_database(), 'TEMP'),"
            "       has_schema_privilege(:r, 'public', 'USAGE'),"
            "       has_schema_privilege(:r, 'public', 'CREATE'),"
            "       has_table_privilege(:r, 'partition_leases', 'SELECT'),"
            "       has_parameter_privilege(:r, 'temp_file_limit', 'SET'),"
            "       has_parameter_privilege(:r, 'temp_file_limit', 'ALTER SYSTEM')"), {"r": roles.role}).one()
        granted = set(conn.execute(sa.text(
            "SELECT p.parname, a.privilege_type FROM pg_parameter_acl p, aclexplode(p.paracl) a "
            "WHERE a.grantee = to_regrole(:r)"), {"r": roles.role}))
    assert grants == {(table, "SELECT") for table in READER_TABLES}
    assert tuple(rights) == (True, False, True, False, False, True, False)
    assert granted == {("temp_file_limit", "SET")}


def test_the_documented_grant_lets_the_reader_set_the_temp_cap_and_without_it_the_servers_value_holds(roles):
    """helm/README.md's ``GRANT SET ON PARAMETER temp_file_limit``: as the reader, ``SET LOCAL
    temp_file_limit`` is allowed (for the transaction only) and the sandbox's temp cap stops a
    query that spills past it. Revoked: the server refuses the SET, the sandbox's savepoint rolls
    the refusal back and the query runs under the server's own value (-1: no limit). Set for the
    role instead (``ALTER ROLE ... SET``): the role's value is the cap."""
    engine = reader_engine(roles)
    admin = sa.create_engine(roles.writer_url, isolation_level="AUTOCOMMIT")
    catalog_db = roles.catalog_db()
    try:
        with engine.connect() as conn:
            with conn.begin():
                assert conn.execute(sa.text("SELECT current_user")).scalar_one() == roles.role
                conn.execute(sa.text("SET LOCAL temp_file_limit = 1024"))
                assert conn.execute(sa.text("SHOW temp_file_limit")).scalar_one() == "1MB"
            with conn.begin():  # the next transaction: the server's value again
                assert conn.execute(sa.text("SHOW temp_file_limit")).scalar_one() == "-1"
        capped = SqlSandbox(catalog_db.query_engine, limits=SandboxLimits(max_temp_mb=1))
        with pytest.raises(SelectionTooLarge) as stopped:
            list(capped.stream(SPILL_SQL))
        assert str(stopped.value) == ("the query's temporary files reached the limit of 1 MB "
                                      "(FASHION_QUERY_MAX_TEMP_MB); narrow the query (a sort over a join?), "
                                      "or raise the limit")

        with admin.connect() as conn:
            conn.exec_driver_sql(f"REVOKE SET ON PARAMETER temp_file_limit FROM {roles.role}")
        with pytest.raises(sa.exc.ProgrammingError, match='permission denied to set parameter "temp_file_limit"') \
                as refused, engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL temp_file_limit = 1024"))
        assert refused.value.orig.pgcode == "42501"  # insufficient_privilege
        rows = [r for _columns, chunk in capped.stream(SPILL_SQL) for r in chunk]
        assert (len(rows), rows[0], rows[-1]) == (SPILL_ROWS, (SPILL_ROWS,), (1,))

        with admin.connect() as conn:
            conn.exec_driver_sql(f"ALTER ROLE {roles.role} SET temp_file_limit = '1MB'")
        engine.dispose()  # the role's setting applies to new sessions
        catalog_db.teardown_after_execution(None)
        catalog_db = roles.catalog_db()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW temp_file_limit")).scalar_one() == "1MB"
        uncapped = SqlSandbox(catalog_db.query_engine, limits=SandboxLimits(max_temp_mb=4096))
        with pytest.raises(SelectionTooLarge, match="^the query's temporary files reached the limit of "):
            list(uncapped.stream(SPILL_SQL))
    finally:
        catalog_db.teardown_after_execution(None)
        engine.dispose()
        admin.dispose()  # the role, its grants and its setting go with the fixture's DROP ROLE


def test_image_set_runs_its_query_as_the_reader_and_selects_exactly_the_queried_images(roles):
    """The whole partition (leases through the writer, the query through the reader) succeeds,
    with exactly the images the SQL selects."""
    result = materialize_set(roles, "apparel", APPAREL_SQL, roles.catalog_db())
    assert result.success
    manifest = read_manifest(roles.backend.store(), "apparel").to_pylist()
    assert {r["id"] for r in manifest} == APPAREL_IDS
    assert {r["id"]: r["article_type"] for r in manifest} == {1: "Jeans", 4: "Tshirts", 5: "Jeans", 8: "Tshirts",
                                                              9: "Jeans"}
    keys = {o.key for o in roles.backend.store().list("image-sets/apparel/images/")}
    assert keys == {f"image-sets/apparel/images/{i}.jpg" for i in APPAREL_IDS}
    [event] = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert (metadata["selected"], metadata["dagster/row_count"], metadata["missing_ids"]) == (6, 5, "12")
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]


def test_image_set_with_the_reader_is_refused_a_table_the_writer_could_read(roles):
    """The same query over ``secret_table`` succeeds with the writer alone, and fails with the
    database's own refusal once FASHION_QUERY_URL names the reader: the role is what the step uses."""
    as_writer = materialize_set(roles, "secret-writer", SECRET_SQL, CatalogDatabase(url=roles.writer_url))
    assert as_writer.success
    assert {r["id"] for r in read_manifest(roles.backend.store(), "secret-writer").to_pylist()} == {1, 2}

    as_reader = materialize_set(roles, "secret-reader", SECRET_SQL, roles.catalog_db())
    assert not as_reader.success
    failure = str(as_reader.get_step_failure_events()[0].step_failure_data.error)
    assert "permission denied for table secret_table" in failure
    assert roles.reader_password not in failure
    assert not roles.backend.store().exists("image-sets/secret-reader/manifest.parquet")


@pytest.mark.parametrize("sql, table", [(LEASES_SQL, "partition_leases"), (SECRET_SQL, "secret_table")])
def test_the_sandbox_accepts_a_read_of_another_table_and_the_database_refuses_it(roles, sql, table):
    """A plain SELECT passes the sandbox's validation; PostgreSQL refuses the reader the table."""
    catalog_db = roles.catalog_db()
    try:
        sandbox = SqlSandbox(catalog_db.query_engine)
        assert sandbox.validate(sql) == sql
        refusal = f"the database rejected the query: permission denied for table {table}"
        with pytest.raises(SqlRejected, match=rf"^{refusal}$"):
            sandbox.columns(sql)
        with pytest.raises(SqlRejected, match=rf"permission denied for table {table}"):
            list(sandbox.stream(sql))
        # The same sandbox, as the writer: the refusal above is the role's, not the sandbox's.
        assert SqlSandbox(catalog_db.engine).columns(sql) == ["id"]
    finally:
        catalog_db.teardown_after_execution(None)


def test_the_reader_cannot_write_even_outside_the_sandbox(roles):
    """With the reader's own engine and an ordinary read-write transaction, PostgreSQL refuses a
    DELETE, a CREATE TABLE and a temporary table; the catalog keeps its rows."""
    before = roles.count("SELECT count(*) FROM products")
    assert before == 12
    engine = reader_engine(roles)
    try:
        for statement, refusal in [
            ("DELETE FROM products", "permission denied for table products"),
            ("INSERT INTO predictions (image_set) VALUES ('x')", "permission denied for table predictions"),
            ("CREATE TABLE stolen (id int)", "permission denied for schema public"),
            ("CREATE TEMP TABLE stolen (id int)", "permission denied to create temporary tables"),
        ]:
            with pytest.raises(sa.exc.ProgrammingError, match=refusal) as caught, engine.begin() as conn:
                conn.execute(sa.text(statement))
            assert caught.value.orig.pgcode == "42501"  # insufficient_privilege
        with engine.connect() as conn:  # what it may do: read the published tables
            assert conn.execute(sa.text("SELECT count(*) FROM products")).scalar_one() == before
    finally:
        engine.dispose()
    assert roles.count("SELECT count(*) FROM products") == before
    with roles.backend.engine().connect() as conn:
        assert not sa.inspect(conn).has_table("stolen")


def test_query_add_checks_the_query_as_the_reader_and_never_shows_its_password(roles, tmp_path):
    """`fashion-assets query add` (a real process) reads FASHION_QUERY_URL: a query on the
    published tables is registered; one on another table is refused by the database and not
    stored; neither output carries the reader's (or the writer's) password."""
    env = roles.backend.env(tmp_path / "ds") | {"FASHION_QUERY_URL": roles.reader_url}
    cli = BIN / "fashion-assets"
    added = run([cli, "query", "add", "apparel", "--sql", APPAREL_SQL], env, tmp_path)
    assert "Query 'apparel' registered (columns: id, article_type)." in added.stdout
    assert QueryRegistry(roles.backend.store()).get("apparel").strip() == APPAREL_SQL

    refused = run([cli, "query", "add", "leak", "--sql", SECRET_SQL], env, tmp_path, check=False)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "fashion-assets: the database rejected the query: permission denied for table secret_table")
    assert not roles.backend.store().exists("queries/leak.sql")

    for output in (added.stdout + added.stderr, refused.stdout + refused.stderr):
        for secret in (roles.reader_password, *roles.backend.secrets):
            assert secret not in output


def test_a_wrong_query_url_is_a_configuration_error_naming_the_variable_not_the_password(production):
    """A reader whose password or host is wrong fails as configuration, before any query runs."""
    from fashion_assets.resources import ConfigurationError

    bad = make_url(production.catalog_url).set(username="nobody", password="wrong-pw-123")
    catalog_db = CatalogDatabase(url=production.catalog_url, query_url=bad.render_as_string(hide_password=False))
    with pytest.raises(ConfigurationError) as refused:
        catalog_db.query_engine  # noqa: B018
    message = str(refused.value)
    assert message.startswith("FASHION_QUERY_URL=postgresql+psycopg2://nobody:***@") and "cannot connect" in message
    assert "wrong-pw-123" not in message
