"""``fashion-assets``: the command line beside the Dagster UI.

    fashion-assets summary     what the last materialisations produced, and where it lives
"""

import argparse
import sys

import dagster as dg

CATALOG_ASSETS = ("products", "product_images")


def _latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def cmd_summary(args: argparse.Namespace) -> int:
    with dg.DagsterInstance.get() as instance:
        products = _latest_metadata(instance, "products")
        images = _latest_metadata(instance, "product_images")
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
    print(f"  database        {products['database']}")
    if images:
        print(f"  object store    {images['store']}")
    print(f"  rejected rows   {products['rejected_report']}")
    print()
    print("Open the UI:  make dev   (dagster dev, then http://127.0.0.1:3000)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashion-assets", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="what the last materialisations produced")
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
