"""``fashion-assets set``: an image set's versions, registered by ``fashion_assets.cli``.

    fashion-assets set versions NAME              one line per version, oldest first
    fashion-assets set diff NAME V1 V2            ids added, removed and changed from V1 to V2
    fashion-assets set gc NAME [--keep N] [--dry-run]
                                                  delete the photos no kept version names

A version is named by its number or its digest (``image_sets.versions``).
"""

import argparse
import contextlib
import os

from .versions import (
    DEFAULT_KEEP,
    Collected,
    collect,
    collect_under_lease,
    diff,
    list_versions,
    models_of,
    models_trained_on,
    read_record,
    read_version,
    resolve,
)

SHOWN_IDS = 20  # per list in `set diff`, without --all


def _versions_or_fail(store, name: str):
    versions = list_versions(store, name)
    if not versions:
        raise ValueError(f"image set {name!r} has never been materialised (no versions): "
                         f"materialise image_set[{name}] first")
    return versions


def cmd_set_versions(args: argparse.Namespace) -> int:
    from ..cli import _resources  # the command line's own set-up (fashion_assets.cli imports this module)

    with _resources() as resources:
        store = resources.store.get_store()
        versions = _versions_or_fail(store, args.name)
        models = models_trained_on(store)
        for version in versions:
            record = read_record(store, version)
            catalog = record.get("catalog") or {}
            trained = models_of(models, store, version, record)
            print(f"{version.seq:>4}  {version.digest}  {record.get('created_at') or 'before versions':25}  "
                  f"{record['images']:>9,} images  {record['bytes']:>14,} bytes  "
                  f"sql {(record.get('sql_md5') or '-')[:12]:12}  "
                  f"catalog {catalog.get('images', '-')} images, max id {catalog.get('max_id', '-')}  "
                  f"models: {', '.join(trained) or '-'}")
    return 0


def _ids(label: str, ids: list[int], every: bool) -> str:
    shown = ids if every else ids[:SHOWN_IDS]
    more = "" if len(shown) == len(ids) else f", ... ({len(ids) - len(shown):,} more; --all shows every id)"
    return f"{label} {len(ids):,}: {', '.join(map(str, shown)) or '-'}{more}"


def cmd_set_diff(args: argparse.Namespace) -> int:
    from ..cli import _resources

    with _resources() as resources:
        store = resources.store.get_store()
        old, new = resolve(store, args.name, args.old), resolve(store, args.name, args.new)
        changes = diff(read_version(store, old, ["id", "md5"]), read_version(store, new, ["id", "md5"]))
    print(f"{args.name}: version {old.seq} ({old.digest}) -> version {new.seq} ({new.digest})")
    for label in ("added", "removed", "changed"):
        print(_ids(label, changes[label], args.all))
    return 0


def gc_line(name: str, result: Collected, dry_run: bool) -> str:
    would = "would delete" if dry_run else "deleted"
    models = "; ".join(f"{seq} for {', '.join(m)}" for seq, m in sorted(result.kept_for_models.items()))
    return (f"{name}: kept versions {', '.join(map(str, result.kept)) or '-'}"
            f"{f' (named by models: {models})' if models else ''}; "
            f"{'would drop' if dry_run else 'dropped'} {', '.join(map(str, result.dropped)) or 'none'}; "
            f"{would} {result.deleted:,} of {result.objects:,} photos ({result.deleted_bytes:,} bytes)"
            f"{f'; {result.in_flight:,} kept for runs in flight' if result.in_flight else ''} "
            f"in {result.seconds:.2f}s")


def cmd_set_gc(args: argparse.Namespace) -> int:
    from ..cli import _instance, _resources

    with _resources() as resources:
        store, catalog_db = resources.store.get_store(), resources.catalog_db
        _versions_or_fail(store, args.name)
        if args.dry_run:  # reads only: no lease, so it answers while runs write
            result = collect(store, args.name, args.keep, dry_run=True)
        else:
            with contextlib.ExitStack() as stack:
                # Without an instance, a lease a dead run left frees at its TTL.
                instance = stack.enter_context(_instance()) if os.environ.get("DAGSTER_HOME") else None

                def run_finished(run_id: str) -> bool:
                    run = instance.get_run_by_id(run_id) if instance is not None else None
                    return run is not None and run.is_finished

                result = collect_under_lease(catalog_db.engine, store, args.name, args.keep, catalog_db.lease_ttl_s,
                                             run_finished)
    print(gc_line(args.name, result, args.dry_run))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    sets = commands.add_parser("set", help="an image set's versions: list, compare, garbage-collect")
    set_commands = sets.add_subparsers(dest="set_command", required=True)
    versions = set_commands.add_parser("versions", help="one line per version: number, digest, when, images, "
                                                        "bytes, SQL hash, catalog state, models trained on it")
    versions.add_argument("name")
    versions.set_defaults(func=cmd_set_versions)
    compare = set_commands.add_parser("diff", help="ids added, removed and changed between two versions")
    compare.add_argument("name")
    compare.add_argument("old", help="a version: its number or digest")
    compare.add_argument("new", help="a version: its number or digest")
    compare.add_argument("--all", action="store_true", help=f"every id (default: the first {SHOWN_IDS} of each)")
    compare.set_defaults(func=cmd_set_diff)
    gc = set_commands.add_parser("gc", help="keep the newest versions and those models name; delete the "
                                            "photos no kept version names")
    gc.add_argument("name")
    gc.add_argument("--keep", type=int, default=DEFAULT_KEEP, help=f"newest versions kept (default {DEFAULT_KEEP})")
    gc.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    gc.set_defaults(func=cmd_set_gc)
