"""Shared set-up for the benchmarks: a local catalog of the shared dataset and one image set."""

import sys
import tempfile
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "fashion-product-images-small"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def local_catalog(dataset: str, query: str, name: str = "bench"):
    """Ingest ``dataset`` into SQLite + a local folder and export ``query`` as image set ``name``.

    Returns (resources, instance, workdir)."""
    from fashion_assets.catalog.assets import product_images, products
    from fashion_assets.image_sets.assets import image_queries, image_set
    from fashion_assets.image_sets.registry import QueryRegistry
    from fashion_assets.resources import CatalogDatabase, CatalogSource, LocalStoreResource

    work = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    resources = {
        "catalog_source": CatalogSource(dataset_dir=str(dataset)),
        "catalog_db": CatalogDatabase(url=f"sqlite:///{work / 'catalog.sqlite'}"),
        "store": LocalStoreResource(path=str(work / "store")),
    }
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    QueryRegistry(resources["store"].get_store()).put(name, query)
    instance.add_dynamic_partitions(image_queries.name, [name])
    assert dg.materialize([image_set], partition_key=name, resources=resources, instance=instance,
                          run_config=QUIET).success
    return resources, instance, work


def metadata(result) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}
