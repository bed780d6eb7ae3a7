"""Test session: one real PostgreSQL cluster and one moto S3 server for the whole session, and a
``backend`` fixture that runs each integration test on both configurations a user can have:
SQLite + local folder (the embedded default) and PostgreSQL + S3 endpoint (production)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fashion_assets.core.storage import ObjectStore
from fashion_assets.resources import CatalogDatabase, CatalogSource, LocalStoreResource, S3StoreResource

from . import servers
from .dagster_dev import dagster_dev, pytest_collection_modifyitems  # noqa: F401  (test_e2e, test_browser)

# The full dataset beside the checkout (developers' machines and CI); FASHION_TEST_DATASET overrides.
SHARED_DATASET = Path(
    os.environ.get("FASHION_TEST_DATASET")
    or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-product-images-small"
)
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def postgres():
    server = servers.start_postgres()
    yield server
    servers.stop_postgres(server)


@pytest.fixture(scope="session")
def s3_server():
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)  # boto3 in this process and in child processes signs with these
    server = servers.start_moto()
    yield server
    servers.stop_moto(server)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@dataclass
class Backend:
    """One configuration of catalog database + object store, as resources and as environment."""

    name: str
    catalog_url: str
    store_url: str
    endpoint_url: str | None = None
    secrets: list[str] = field(default_factory=list)  # values that must never appear in output

    def resources(self, dataset_dir: Path | str) -> dict:
        if self.store_url.startswith("s3://"):
            store = S3StoreResource(url=self.store_url, endpoint_url=self.endpoint_url, region_name="us-east-1")
        else:
            store = LocalStoreResource(path=self.store_url)
        return {
            "catalog_source": CatalogSource(dataset_dir=str(dataset_dir)),
            "catalog_db": CatalogDatabase(url=self.catalog_url),
            "store": store,
        }

    def env(self, dataset_dir: Path | str) -> dict[str, str]:
        env = {"FASHION_DATASET_DIR": str(dataset_dir), "FASHION_CATALOG_URL": self.catalog_url,
               "FASHION_STORE_URL": self.store_url}
        if self.endpoint_url:
            env["FASHION_S3_ENDPOINT_URL"] = self.endpoint_url
        return env

    def store(self) -> ObjectStore:
        return self.resources(".")["store"].get_store()

    def engine(self):
        return self.resources(".")["catalog_db"].engine


def embedded_backend(tmp_path: Path) -> Backend:
    return Backend("embedded", f"sqlite:///{tmp_path / 'catalog.sqlite'}", str(tmp_path / "store"))


def production_backend(postgres, s3_server) -> Backend:
    name = "t" + uuid.uuid4().hex[:12]
    url = postgres.create_database(name)
    s3_server.client().create_bucket(Bucket=name)
    return Backend("postgres_s3", url, f"s3://{name}/fashion", s3_server.endpoint_url, secrets=[postgres.password])


@pytest.fixture(params=["embedded", "postgres_s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "embedded":
        return embedded_backend(tmp_path)
    return production_backend(request.getfixturevalue("postgres"), request.getfixturevalue("s3_server"))


@pytest.fixture
def production(postgres, s3_server) -> Backend:
    return production_backend(postgres, s3_server)


@pytest.fixture
def shared_dataset() -> Path:
    if not (SHARED_DATASET / "styles.csv").is_file():
        pytest.skip(f"the shared dataset is not here ({SHARED_DATASET}); only developers' and CI machines have it")
    return SHARED_DATASET
