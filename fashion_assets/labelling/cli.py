"""``fashion-assets export`` and ``fashion-assets labels``: the commands registered by ``fashion_assets.cli``.

    fashion-assets export NAME --format label-studio|coco|csv --out PATH [--expires S] [--document-root DIR]
                          [--queue doubt|random [--limit N] [--seed S]]
    fashion-assets labels import FILE       a Label Studio JSON export into table `labels`
    fashion-assets labels show              what table `labels` holds
"""

import argparse
import os

import dagster as dg

from .export import DEFAULT_EXPIRES_S, FORMATS, export_set
from .importer import import_labels
from .queue import DEFAULT_SEED, QUEUES, QueueResult


def queue_line(result: QueueResult) -> str:
    """What the queue chose, in one line."""
    duplicates = (f"{result.duplicates_left_out:,} near-duplicate{'' if result.duplicates_left_out == 1 else 's'}"
                  " of an image ahead of it")
    if result.queue == "random":
        return (f"Queue random (seed {result.seed}): {len(result.chosen):,} of {result.considered:,} images; "
                f"left out: {duplicates}.")
    return (f"Queue doubt: {len(result.chosen):,} of {result.considered:,} images not tagged automatically, most "
            f"doubtful first ({result.disagreeing:,} disagree with the catalog); left out: {result.automatic:,} "
            f"tagged automatically, {result.unpredicted:,} without a prediction, {duplicates}.")


def cmd_export(args: argparse.Namespace) -> int:
    from ..cli import _resources  # the command line's own set-up (fashion_assets.cli imports this module)

    with _resources() as resources:
        result = export_set(resources.store.get_store(), resources.catalog_db.engine, args.name, args.format,
                            args.out, expires_s=args.expires, document_root=args.document_root,
                            queue=args.queue, limit=args.limit, seed=args.seed, version=args.version)
    predicted = (f", {result.with_predictions:,} with pre-annotations of model {result.model_version}"
                 if result.with_predictions else ", no predictions for this set (no pre-annotations)")
    print(f"{result.tasks:,} images of {args.name!r} (version {result.set_version}) written to {result.path} ({args.format}"
          f"{predicted if args.format != 'coco' else ''}).")
    if result.queue:
        print(queue_line(result.queue))
    if result.config_path:
        print(f"Labelling configuration: {result.config_path} (paste it in the project's Labeling Interface)")
    return 0


def _report(metadata: dict) -> str:
    """Records a materialisation of ``labels`` in the Dagster instance, when there is one."""
    if not os.environ.get("DAGSTER_HOME"):
        return "DAGSTER_HOME is not set: the import is not recorded in the Dagster instance"
    with dg.DagsterInstance.get() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="labels", description="fashion-assets labels import",
            metadata={k: v for k, v in metadata.items() if k != "skipped"}))
    return "Recorded as a materialisation of asset `labels`"


def cmd_labels_import(args: argparse.Namespace) -> int:
    from ..cli import _resources
    from .assets import labels_metadata

    with _resources() as resources:
        result = import_labels(resources.catalog_db.engine, args.file)
        metadata = labels_metadata(resources.catalog_db.engine, result)
    print(result.summary())
    print(_report(metadata))
    return 0


def cmd_labels_show(args: argparse.Namespace) -> int:
    from ..cli import _resources
    from .assets import labels_metadata

    with _resources() as resources:
        metadata = labels_metadata(resources.catalog_db.engine)
    for key in ("dagster/row_count", "labels_master_category", "labels_sub_category", "labels_article_type",
                "products_labelled", "annotators", "newest_answer"):
        print(f"{key.removeprefix('dagster/'):24} {metadata[key]}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the ``fashion-assets`` parser."""
    export = commands.add_parser("export", help="an image set for labelling: Label Studio tasks, COCO or CSV")
    export.add_argument("name", help="the image set (a query's name)")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--version", help="the set version (its number or digest: `fashion-assets set versions`); "
                                          "default: the newest")
    export.add_argument("--out", required=True, help="the file to write (label-studio: the labelling "
                        "configuration goes beside it, as <stem>.xml)")
    export.add_argument("--expires", type=int, default=DEFAULT_EXPIRES_S,
                        help=f"seconds a presigned S3 image URL stays valid (default {DEFAULT_EXPIRES_S})")
    export.add_argument("--document-root", help="local store: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT "
                        "(default: the store's folder)")
    export.add_argument("--queue", choices=QUEUES, help="only a labelling queue: doubt (the images the model does "
                        "not tag automatically, disagreements with the catalog first, then least margin; needs the "
                        "set's predictions) or random (a seeded sample); one image per near-duplicate group")
    export.add_argument("--limit", type=int, help="with --queue: at most this many images")
    export.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"with --queue random: the sample's seed (default {DEFAULT_SEED})")
    export.set_defaults(func=cmd_export)

    labels = commands.add_parser("labels", help="human labels (table `labels`)")
    label_commands = labels.add_subparsers(dest="labels_command", required=True)
    imported = label_commands.add_parser("import", help="read a Label Studio JSON export into table `labels`")
    imported.add_argument("file")
    imported.set_defaults(func=cmd_labels_import)
    label_commands.add_parser("show", help="what table `labels` holds").set_defaults(func=cmd_labels_show)
