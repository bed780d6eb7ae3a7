"""``image_query_sensor``: a ``queries/<name>.sql`` whose SQL is not what its set was last
materialised with becomes a run.

The sensor follows what ran, not only what it saw: for a query file it has not handled yet, it
compares the file's MD5 with the ``sql_md5`` of the partition's latest materialisation (older
materialisations carry only their ``sql``, which it hashes the same way). So reverting a query
(A -> B -> A) re-runs it, and the first tick after ``make demo`` requests nothing, since the
demo's sets were made with the files as they are.

The cursor (JSON ``{"queries": {name: md5}, "ignored": [...]}``) lives in Dagster's sensor
cursor and records which version of each file was handled (requested, found up to date, or
refused), so a daemon restart neither forgets nor replays. A run key names the partition, the
SQL's MD5 and the materialisation it starts from, so it is unique per request and a repeated
evaluation of the same state cannot launch the same run twice.

One bad file never stops the others: a query that does not validate, a file that is not UTF-8,
one over the size limit (not even read) or nested too deeply to parse is logged with its name and
the reason, and skipped until it changes; every other query goes on in the same tick. A file
that cannot be read for another reason (the store failed mid-tick) is not recorded, so the next
tick tries it again.
"""

import json
import re

import dagster as dg

from .. import layout
from ..core.storage import md5_hex
from ..resources import CatalogDatabase, ObjectStoreResource
from .assets import SQL_MD5, image_queries, image_set
from .registry import QueryNotFound, QueryRegistry, QueryUnreadable
from .sandbox import SqlRejected, dialect_of, validate_sql


@dg.sensor(
    asset_selection=[image_set],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a partition and requests an image_set run for each new or changed queries/<name>.sql.",
)
def image_query_sensor(
    context: dg.SensorEvaluationContext, store: ObjectStoreResource, catalog_db: CatalogDatabase
) -> dg.SensorResult:
    state = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = state.get("queries", {})
    registry = QueryRegistry(store.get_store())
    current = registry.checksums()
    dialect = dialect_of(catalog_db.url)
    known_partitions = set(context.instance.get_dynamic_partitions(image_queries.name))

    new_partitions, run_requests = [], []
    for name, md5 in sorted(current.items()):
        if seen.get(name) == md5:
            continue
        key = layout.query(name)
        try:
            validate_sql(registry.get(name), dialect, registry.max_sql_bytes)
        except QueryNotFound:  # removed since the listing: the next tick sees it gone
            continue
        except SqlRejected as exc:  # QueryUnreadable too: not UTF-8, over the size limit
            reason = exc.reason if isinstance(exc, QueryUnreadable) else str(exc)
            context.log.warning(f"{key} is skipped until it changes: {reason}")
            seen[name] = md5
            continue
        except Exception as exc:  # the store failed on this file: the others go on, this one next tick
            context.log.warning(f"{key} could not be read this tick, tried again on the next: "
                                f"{type(exc).__name__}: {exc}")
            continue
        seen[name] = md5
        if name not in known_partitions:
            new_partitions.append(name)
            latest_md5, since = None, "none"
        else:
            latest_md5, since = latest_sql_md5(context.instance, name)
        if latest_md5 == md5:
            context.log.info(f"{key} is what image_set[{name}] was last made with: nothing to do")
            continue
        change = "new" if name in new_partitions else "changed"
        context.log.info(f"{key} is {change}: requesting a run")
        run_requests.append(dg.RunRequest(partition_key=name, run_key=f"{name}:{md5}:{since}",
                                          tags={"fashion-assets/query": name}))
    ignored = registry.invalid_names()
    for name in set(ignored) - set(state.get("ignored", [])):  # say it once, not every tick
        context.log.warning(f"{layout.QUERIES}{ascii(name)[1:-1]} is ignored: expected queries/<slug>.sql")
    for name in set(seen) - set(current):  # file deleted: forget it; `query remove` drops the partition
        del seen[name]

    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[image_queries.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps({"queries": seen, "ignored": ignored}, sort_keys=True),
    )


_SQL_BLOCK = re.compile(r"\A```sql\n(.*)\n```\Z", re.DOTALL)


def latest_sql_md5(instance: dg.DagsterInstance, name: str) -> tuple[str | None, str]:
    """(MD5 of the SQL, storage id) of ``image_set[name]``'s latest materialisation; (None,
    "none") when it has none."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=image_set.key, asset_partitions=[name]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None, "none"
    metadata = records[0].asset_materialization.metadata
    if SQL_MD5 in metadata:
        return str(metadata[SQL_MD5].value), str(records[0].storage_id)
    # Materialised before sql_md5 existed: its SQL, as the registry stores it (stripped + "\n").
    block = _SQL_BLOCK.match(str(metadata["sql"].value)) if "sql" in metadata else None
    sql_md5 = md5_hex((block.group(1).strip() + "\n").encode("utf-8")) if block else None
    return sql_md5, str(records[0].storage_id)
