"""Dagster resources: the catalog source folder, the catalog database and the object store.

Configuration contract (README, "Configuration"): every setting comes from an environment
variable, read through ``dg.EnvVar`` so the UI shows the variable's name, never its value.
Unset means the embedded default: a SQLite file and a local folder under ``data/``.

| variable                  | meaning                                   | default                         |
|---------------------------|-------------------------------------------|---------------------------------|
| FASHION_DATASET_DIR       | folder with styles.csv and images/        | examples/sample-catalog         |
| FASHION_CATALOG_URL       | SQLAlchemy URL of the catalog database    | sqlite:///data/catalog.sqlite   |
| FASHION_QUERY_URL         | read-only role for users' queries         | FASHION_CATALOG_URL             |
| FASHION_LEASE_TTL_S       | partition lease without renewal (s)       | 120                             |
| FASHION_STORE_URL         | local folder, or s3://bucket/prefix       | data/store                      |
| FASHION_S3_ENDPOINT_URL   | S3-compatible endpoint (MinIO...)         | AWS                             |
| AWS_ACCESS_KEY_ID, ...    | S3 credentials                            | boto3's usual chain (IRSA...)   |
"""


import os
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from . import layout
from .catalog import tables as _catalog_tables  # noqa: F401  (registers products, product_images)
from .core import database, leases
from .core.storage import EndpointUnreachable, LocalObjectStore, ObjectStore, StoreError, parse_s3_url
from .labelling import table as _labels_table  # noqa: F401  (registers labels)
from .predictions import table as _predictions_table  # noqa: F401  (registers predictions)

DATASET_DIR_ENV = "FASHION_DATASET_DIR"
CATALOG_URL_ENV = "FASHION_CATALOG_URL"
STORE_URL_ENV = "FASHION_STORE_URL"
S3_ENDPOINT_ENV = "FASHION_S3_ENDPOINT_URL"
LEASE_TTL_ENV = "FASHION_LEASE_TTL_S"
QUERY_URL_ENV = "FASHION_QUERY_URL"

# In a source checkout (the usual case, `pip install -e .`) defaults live beside the code, so
# `make demo`, `dagster dev` and the CLI agree wherever they are started from.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
_IN_CHECKOUT = (PROJECT_ROOT / "setup.py").is_file()
DATA_DIR = (PROJECT_ROOT if _IN_CHECKOUT else Path.cwd()) / "data"
SAMPLE_CATALOG_DIR = PROJECT_ROOT / "examples" / "sample-catalog"
DEFAULT_CATALOG_URL = f"sqlite:///{DATA_DIR / 'catalog.sqlite'}"
DEFAULT_STORE_PATH = str(DATA_DIR / "store")


class ConfigurationError(RuntimeError):
    """A setting that cannot work; the message names the environment variable to fix."""


class CatalogSource(dg.ConfigurableResource):
    """Where the catalog comes from: a folder with ``styles.csv`` and ``images/``.

    The Kaggle download's layout (``myntradataset/styles.csv``, ``images/``) works as is.
    """

    dataset_dir: str = Field(description=f"Folder with styles.csv and images/ ({DATASET_DIR_ENV}).")

    def _find(self, name: str) -> Path | None:
        root = Path(self.dataset_dir).expanduser()
        for candidate in (root / name, root / "myntradataset" / name):
            if candidate.exists():
                return candidate
        return None

    def styles_csv(self) -> Path:
        path = self._find("styles.csv")
        if path is None or not path.is_file():
            raise ConfigurationError(
                f"{DATASET_DIR_ENV}={self.dataset_dir}: no styles.csv in that folder "
                "(nor in its myntradataset/ subfolder)"
            )
        return path

    def images_dir(self) -> Path:
        path = self._find("images")
        if path is None or not path.is_dir():
            raise ConfigurationError(
                f"{DATASET_DIR_ENV}={self.dataset_dir}: no images/ folder in that folder "
                "(nor in its myntradataset/ subfolder)"
            )
        return path


def _connect(engine: sa.Engine) -> None:
    with engine.connect():
        pass


def _open_engine(url: str, variable: str, prepare, failure: str) -> sa.Engine:
    """An engine for ``url``, with ``prepare`` run on it now, so that a wrong URL, password or
    host fails as configuration naming ``variable``, with the password masked."""
    shown = database.masked(url)
    try:
        engine = database.create_engine(url)
    except Exception as exc:  # bad scheme, missing driver...
        raise ConfigurationError(f"{variable}={shown}: {database.scrub(str(exc), url)}") from None
    try:
        prepare(engine)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        # A driver may repeat what it was given (an invalid option's value): never the secrets.
        raise ConfigurationError(f"{variable}={shown}: {failure}: {database.scrub(reason, url)}") from None
    return engine


class CatalogDatabase(dg.ConfigurableResource):
    """The catalog's SQL database: SQLite by default, PostgreSQL in production.

    Two connections with two rights: ``url`` is the writer's (ingest, predictions, leases);
    ``query_url``, when set, is the read-only role users' SQL runs with (``image_sets.sandbox``);
    unset, queries use the writer's URL, still inside the sandbox's read-only transaction.

    Every table (``catalog.tables``, ``labelling.table``, ``predictions.table``, ``core.leases``) is created on first
    use; a database that cannot be reached fails the step at once, with the URL shown masked:
    the password, and any secret in the query string (``?password=...``), as ``***``
    (``database.masked``).
    """

    url: str = Field(description=f"SQLAlchemy URL ({CATALOG_URL_ENV}); postgresql+psycopg2://... in production.")
    query_url: str | None = Field(
        default=None,
        description=f"SQLAlchemy URL of a read-only role for users' queries ({QUERY_URL_ENV}); default: url.",
    )
    lease_ttl_s: float = Field(
        default=leases.DEFAULT_TTL_S,
        description=f"Seconds a partition's writer may go without renewing its lease before another run may take "
        f"the partition over ({LEASE_TTL_ENV}; core/leases.py).",
    )
    _engine: sa.Engine | None = PrivateAttr(default=None)
    _query_engine: sa.Engine | None = PrivateAttr(default=None)

    @property
    def display_url(self) -> str:
        return database.masked(self.url)

    @property
    def query_engine(self) -> sa.Engine:
        """What the sandbox runs users' SQL with: the read-only role when ``query_url`` is set."""
        if not self.query_url or self.query_url == self.url:
            return self.engine
        if self._query_engine is None:
            self.engine  # noqa: B018 - the writer creates the tables the reader reads
            engine = _open_engine(self.query_url, QUERY_URL_ENV, _connect, "cannot connect")
            self._query_engine = engine
        return self._query_engine

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            engine = _open_engine(self.url, CATALOG_URL_ENV, database.ensure_schema, "cannot use the database")
            self._engine = engine
        return self._engine

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.engine  # noqa: B018 - connect now, so a wrong URL fails before any work

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for engine in (self._engine, self._query_engine):
            if engine is not None:
                engine.dispose()


class ObjectStoreResource(dg.ConfigurableResource):
    """Base of the two object stores; assets ask for ``store: ObjectStoreResource``."""

    max_concurrency: int = Field(default=16, description="Parallel transfers (threads) for bulk copies.")

    def get_store(self) -> ObjectStore:
        raise NotImplementedError

    def s3_client(self) -> Any:
        """The boto3 client of an S3 store (a model URI on S3 is read with it); None here."""
        return None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        try:
            self.get_store().check()
        except EndpointUnreachable as exc:  # an S3 store's endpoint is what to fix, not its URL
            endpoint = getattr(self, "endpoint_url", None)
            shown = f"={database.masked_endpoint(endpoint)}" if endpoint else " unset (AWS S3)"
            raise ConfigurationError(f"{S3_ENDPOINT_ENV}{shown}: {exc}") from None
        except StoreError as exc:
            raise ConfigurationError(f"{STORE_URL_ENV}={self.get_store().url}: {exc}") from None


class LocalStoreResource(ObjectStoreResource):
    """A local folder as the object store (the embedded default)."""

    path: str = Field(description=f"Folder that holds the objects ({STORE_URL_ENV}).")
    max_concurrency: int = Field(default=8, description="Parallel reads/writes (threads).")

    def get_store(self) -> ObjectStore:
        return LocalObjectStore(self.path.removeprefix("file://"))


def _env_or(name: str, default: Any) -> Any:
    """``dg.EnvVar(name)`` when the variable is set, else the documented default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def store_from_env() -> ObjectStoreResource:
    url = os.environ.get(STORE_URL_ENV, "")
    if url.startswith("s3://"):
        from .resources_s3 import S3StoreResource  # dagster-aws: imported only for an S3 store (~1 s)

        return S3StoreResource(
            url=dg.EnvVar(STORE_URL_ENV),
            endpoint_url=_env_or(S3_ENDPOINT_ENV, None),
            region_name=_env_or("AWS_REGION", None),
            aws_access_key_id=_env_or("AWS_ACCESS_KEY_ID", None),
            aws_secret_access_key=_env_or("AWS_SECRET_ACCESS_KEY", None),
            aws_session_token=_env_or("AWS_SESSION_TOKEN", None),
        )
    if "://" in url and not url.startswith("file://"):
        raise ConfigurationError(f"{STORE_URL_ENV}={url}: expected a local folder or s3://bucket/prefix")
    return LocalStoreResource(path=_env_or(STORE_URL_ENV, DEFAULT_STORE_PATH))


def step_io_manager(store: ObjectStoreResource) -> dg.ConfigurableIOManager | None:
    """Where steps hand each other their outputs (work lists of shards, plans, per-shard
    results; a few kilobytes each). Steps of one run share no disk on Kubernetes, one pod each,
    so with an S3 store they go to the same bucket, under ``<prefix>/_dagster/``. With a local
    store: Dagster's default, files under DAGSTER_HOME."""
    if isinstance(store, LocalStoreResource):
        return None
    from .resources_s3 import S3PickleIOManager
    try:
        bucket, prefix = parse_s3_url(os.environ.get(STORE_URL_ENV, ""))
    except ValueError as exc:
        raise ConfigurationError(f"{STORE_URL_ENV}: {exc}") from None
    s3_prefix = "/".join(part for part in (prefix, layout.STEP_OUTPUTS) if part)
    return S3PickleIOManager(s3_resource=store, s3_bucket=bucket, s3_prefix=s3_prefix)


def resources_from_env() -> dict[str, Any]:
    """The resources every asset uses, as the environment configures them."""
    store = store_from_env()
    resources = {
        "catalog_source": CatalogSource(dataset_dir=_env_or(DATASET_DIR_ENV, str(SAMPLE_CATALOG_DIR))),
        "catalog_db": CatalogDatabase(url=_env_or(CATALOG_URL_ENV, DEFAULT_CATALOG_URL),
                                      query_url=_env_or(QUERY_URL_ENV, None),
                                      lease_ttl_s=float(os.environ.get(LEASE_TTL_ENV) or leases.DEFAULT_TTL_S)),
        "store": store,
    }
    io_manager = step_io_manager(store)
    if io_manager is not None:
        resources["io_manager"] = io_manager
    return resources


def __getattr__(name: str) -> Any:
    """``S3StoreResource`` from here as before, imported when first asked for: dagster-aws costs
    about a second of every process's start, and the embedded default never needs it."""
    if name == "S3StoreResource":
        from .resources_s3 import S3StoreResource

        return S3StoreResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
