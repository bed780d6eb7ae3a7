"""Shared set-up for the benchmarks: a local catalog of the shared dataset and one image set."""

import json
import os
import statistics
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


def summary(rates: list[float]) -> str:
    """A rate's median and best of the repeats, as printed by the benches."""
    return f"{statistics.median(rates):8.1f} images/s (best {max(rates):7.1f})"


def ratios(asset: list[float], baseline: list[float]) -> str:
    """Asset / baseline: the median of the rates' ratio, repeat by repeat (each pair back to back),
    and the ratio of the bests. On a shared 2-core machine a loop's rate moves by up to 2x from one
    minute to the next; the pairwise median is what to read."""
    return f"{pairwise(asset, baseline):.2f}x (best/best {max(asset) / max(baseline):.2f}x)"


def metadata(result) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def add_json_argument(parser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the figures there (bench/table.py reads them)")


def write_figures(path: str | None, figures: dict) -> None:
    """``figures`` and the load average as JSON at ``path`` (nothing without one)."""
    if path:
        Path(path).write_text(json.dumps({**figures, "load": list(os.getloadavg()), "cores": os.cpu_count()}))


def pairwise(asset: list[float], baseline: list[float]) -> float:
    """The median of asset / baseline, repeat by repeat (see ``ratios``)."""
    return statistics.median(a / b for a, b in zip(asset, baseline, strict=True))
