"""``fashion-assets``: the command line beside the Dagster UI.

    fashion-assets query add NAME (--sql TEXT | --file PATH) [--replace]
                                                                validate, register, add the partition
    fashion-assets query list | show NAME | remove NAME [--purge]
    fashion-assets set versions NAME | diff NAME V1 V2 | gc NAME [--keep N] [--dry-run]
                                                                an image set's versions
    fashion-assets summary                                      what the last materialisations produced,
                                                                and each set's auto-tag coverage

Configured by the same environment variables as the code location (README, "Configuration");
the partition goes to the Dagster instance in DAGSTER_HOME.
"""

import argparse
import contextlib
import os
import sys
from pathlib import Path

import dagster as dg

from . import layout
from .classifier.labels import HEADS
from .core import database
from .core.leases import PartitionBusy
from .core.startup import freeze_what_is_loaded
from .image_sets.assets import image_queries
from .image_sets.export import purge_image_set
from .image_sets.registry import QueryNotFound, QueryRegistry, QueryUnreadable, check_name, not_utf8
from .image_sets.cli import add_commands as add_set_commands
from .image_sets.sandbox import SandboxLimits, SqlRejected, SqlSandbox, SqlTimeout, check_sql_size
from .labelling.cli import add_commands as add_labelling_commands
from .labelling.queue import auto_coverage
from .resources import ConfigurationError, resources_from_env
from .serving.cli import add_commands as add_serving_commands

freeze_what_is_loaded()  # what the imports above loaded lives as long as the command (core/startup.py)


class CliError(Exception):
    pass


@contextlib.contextmanager
def _resources():
    """The code location's resources, resolved from the environment and set up (fail fast)."""
    try:
        with dg.build_resources(resources_from_env()) as resources:
            yield resources
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None
    except dg.DagsterError as exc:  # setup errors arrive wrapped; show our message, not the chain
        cause = exc.__cause__ or exc
        raise CliError(str(cause)) from None


@contextlib.contextmanager
def _instance():
    if not os.environ.get("DAGSTER_HOME"):
        raise CliError("DAGSTER_HOME is not set: run through `make`, or set it to your Dagster instance's folder")
    with dg.DagsterInstance.get() as instance:
        yield instance


def read_sql_file(path: str, max_bytes: int) -> str:
    """A query file's text, refused with one line naming the file when it is missing, over the
    size limit (checked before reading it) or not UTF-8."""
    try:
        size = os.stat(path).st_size
        check_sql_size(size, max_bytes)
        data = Path(path).read_bytes()
        return data.decode("utf-8")
    except OSError as exc:
        raise CliError(f"--file {path}: {exc.strerror or exc}") from None
    except SqlRejected as exc:
        raise CliError(f"--file {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"--file {path}: {not_utf8(data, exc)}") from None


def cmd_query_add(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    limits = SandboxLimits.from_env()
    sql = read_sql_file(args.file, limits.max_sql_bytes) if args.file else args.sql
    with _resources() as resources:
        sandbox = SqlSandbox(resources.catalog_db.query_engine, timeout_s=args.timeout, limits=limits)
        # The sandbox's check, as for a file dropped in queries/ (the sensor's validate_sql, then
        # image_set runs the same text): it parses, then the database checks names and types
        # without reading rows.
        columns = sandbox.columns(sql)
        registry = QueryRegistry(resources.store.get_store(), limits.max_sql_bytes)
        replaced = registry.add(name, sql, replace=args.replace)  # QueryExists without --replace
    with _instance() as instance:
        if not instance.has_dynamic_partition(image_queries.name, name):
            instance.add_dynamic_partitions(image_queries.name, [name])
    print(f"Query {name!r} registered (columns: {', '.join(columns)}).")
    if replaced is not None:
        print(f"Replaced: {replaced}")
    print("Materialise it: dagster asset materialize -m fashion_assets.definitions --select image_set "
          f"--partition {name}")
    return 0


def cmd_query_list(args: argparse.Namespace) -> int:
    with _resources() as resources, _instance() as instance:
        registry = QueryRegistry(resources.store.get_store())
        names = registry.checksums()
        partitions = set(instance.get_dynamic_partitions(image_queries.name))
        for name in sorted(set(names) | partitions):
            try:
                first_line = (registry.get(name).strip().splitlines() or [""])[0] if name in names \
                    else f"(no {layout.query(name)} in the store)"
            except QueryUnreadable as exc:  # one bad file does not hide the others
                first_line = f"(unreadable: {exc.reason})"
            state = "partition" if name in partitions else "no partition yet"
            print(f"{name:32} {state:16} {first_line[:80]}")
    return 0


def cmd_query_show(args: argparse.Namespace) -> int:
    with _resources() as resources:
        store = resources.store.get_store()
        print(QueryRegistry(store).get(check_name(args.name)).rstrip())
        if store.exists(layout.manifest(args.name)):
            print(f"\n-- manifest: {store.uri(layout.manifest(args.name))}")
    return 0


def cmd_query_remove(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    with _resources() as resources:
        store = resources.store.get_store()
        QueryRegistry(store).remove(name)
        purged = purge_image_set(store, name) if args.purge else 0
    with _instance() as instance:
        if instance.has_dynamic_partition(image_queries.name, name):
            instance.delete_dynamic_partition(image_queries.name, name)
    folder = layout.image_set(name)
    print(f"Query {name!r} removed" + (f"; {purged:,} objects under {folder} deleted." if args.purge
                                        else f"; its data under {folder} is kept (--purge deletes it)."))
    return 0

CATALOG_ASSETS = ("products", "product_images")


def latest_metadata(instance: dg.DagsterInstance, key: str, partition: str | None = None) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


def auto_tag_lines(names: list[str]) -> list[str]:
    """Per set of ``names`` with rows in table ``predictions``: per head, how many of its images
    are tagged automatically (``<head>_auto``), read from the catalog database."""
    try:
        with _resources() as resources:
            coverage = auto_coverage(resources.catalog_db.engine)
    except CliError as exc:
        return [f"Auto-tags: cannot read table predictions ({exc})"]
    found = [(name, coverage[name]) for name in names if name in coverage]
    if not found:
        return []
    lines = ["Auto-tags (per head: images whose calibrated confidence reaches the model's threshold)"]
    for name, c in found:
        lines.append(f"  {name:28} " + ", ".join(
            f"{h} {c.automatic[h]:,}/{c.images:,} ({c.automatic[h] / c.images:.1%})" for h in HEADS)
            + f"   model {c.model_version}")
    return lines


def cmd_summary(args: argparse.Namespace) -> int:
    with dg.DagsterInstance.get() as instance:
        products = latest_metadata(instance, "products")
        images = latest_metadata(instance, "product_images")
        image_sets = {
            name: meta
            for name in sorted(instance.get_dynamic_partitions(image_queries.name))
            if (meta := latest_metadata(instance, "image_set", name))
        }
        model = latest_metadata(instance, "fashion_classifier")
        predicted = {
            name: meta
            for name in image_sets
            if (meta := latest_metadata(instance, "predictions", name))
        }
    if not products:
        print("No catalog yet: run `make demo` (or materialise `products` in the UI).", file=sys.stderr)
        return 1
    print("Catalog")
    print(f"  products        {products['dagster/row_count']:>8,} rows   ({products['rows_rejected']:,} rejected, "
          f"{products['names_rejoined']:,} names re-joined)   from {products['source']}")
    if images:
        print(f"  product_images  {images['images_stored']:>8,} images ({images['images_skipped']:,} skipped, "
              f"{images['products_without_image']:,} products without image, "
              f"{images['images_without_product']:,} images without product)")
    # Masked when it was recorded; masked again for what older versions recorded.
    print(f"  database        {database.masked(products['database'])}")
    if images:
        print(f"  object store    {images['store']}")
    print(f"  rejected rows   {products['rejected_report']}")
    if image_sets:
        print("Image sets (image_set partitions)")
        for name, meta in image_sets.items():
            print(f"  {name:28} {meta['dagster/row_count']:>6,} images ({meta['missing']:,} selected without image)"
                  f"   {meta['manifest']}")
    if model:
        print(f"Classifier {model['version']}  validation accuracy: " + ", ".join(
            f"{h} {model[f'{h}_accuracy']:.1%}" for h in HEADS) + f"   ({model['training_seconds']:.0f}s training)")
        if all(f"unseen_{h}_accuracy" in model for h in HEADS):
            print("  on the unseen range (newest ids, never trained on): " + ", ".join(
                f"{h} {model[f'unseen_{h}_accuracy']:.1%}" for h in HEADS))
        print(f"  {model['model_keras'] or model['saved_model']}")
    if predicted:
        print("Predictions (table `predictions` in the catalog database, and Parquet)")
        for name, meta in predicted.items():
            agreement = meta.get("agreement_article_type")
            agree = f", article type agrees with the catalog on {agreement:.1%}" if agreement is not None else ""
            print(f"  {name:28} {meta['dagster/row_count']:>6,} rows{agree}   {meta['parquet']}")
    for line in auto_tag_lines(list(image_sets)) if image_sets else []:
        print(line)
    print()
    print("Open the UI:  make dev   (dagster dev, then http://127.0.0.1:3000)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashion-assets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="what the last materialisations produced")
    summary.set_defaults(func=cmd_summary)

    query = commands.add_parser("query", help="the image queries (queries/<name>.sql in the store)")
    query_commands = query.add_subparsers(dest="query_command", required=True)
    add = query_commands.add_parser("add", help="validate a query, store it and add its partition")
    add.add_argument("name", help="a slug: lower-case letters, digits and '-'")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--sql", help="the SELECT statement")
    source.add_argument("--file", help="a file holding the SELECT statement")
    add.add_argument("--timeout", type=float, default=30.0, help="seconds the check may take (default 30)")
    add.add_argument("--replace", action="store_true",
                     help="replace the query's SQL if the name has one (without it, an existing name is refused)")
    add.set_defaults(func=cmd_query_add)
    query_commands.add_parser("list", help="every query and whether it has a partition").set_defaults(
        func=cmd_query_list
    )
    show = query_commands.add_parser("show", help="a query's SQL")
    show.add_argument("name")
    show.set_defaults(func=cmd_query_show)
    remove = query_commands.add_parser("remove", help="remove a query and its partition")
    remove.add_argument("name")
    remove.add_argument("--purge", action="store_true",
                        help="also delete the set's folder in the store: images, manifest, augmented sets, predictions")
    remove.set_defaults(func=cmd_query_remove)
    # Each stage that has commands registers them (their functions raise CliError or ValueError
    # for bad input, which main() prints as one line).
    add_serving_commands(commands)
    add_labelling_commands(commands)
    add_set_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, SqlRejected, SqlTimeout, ValueError, QueryNotFound, PartitionBusy) as exc:
        print(f"fashion-assets: {database.scrub(str(exc))}", file=sys.stderr)  # a URL in it: masked
        return 2


if __name__ == "__main__":
    sys.exit(main())
