"""``image_query_sensor``: a new or changed ``queries/<name>.sql`` in the store becomes a run.

The cursor (JSON ``{"queries": {name: md5}, "ignored": [...]}``) lives in Dagster's sensor cursor, so a daemon restart neither
forgets what it has seen nor replays it. A query that does not validate is logged and skipped
until its file changes; the sensor keeps running.
"""

import json

import dagster as dg

from .. import layout
from ..resources import CatalogDatabase, ObjectStoreResource
from .assets import image_queries, image_set
from .registry import QueryRegistry
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
        try:
            validate_sql(registry.get(name), dialect)
        except SqlRejected as exc:
            context.log.warning(f"{layout.query(name)} is skipped until it changes: {exc}")
            continue
        finally:
            seen[name] = md5
        if name not in known_partitions:
            new_partitions.append(name)
        change = "new" if name in new_partitions else "changed"
        context.log.info(f"{layout.query(name)} is {change}: requesting a run")
        run_requests.append(dg.RunRequest(partition_key=name, run_key=f"{name}:{md5}", tags={"fashion-assets/query": name}))
    ignored = registry.invalid_names()
    for name in set(ignored) - set(state.get("ignored", [])):  # say it once, not every tick
        context.log.warning(f"{layout.QUERIES}{name} is ignored: expected queries/<slug>.sql")
    for name in set(seen) - set(current):  # file deleted: forget it; `query remove` drops the partition
        del seen[name]

    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[image_queries.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps({"queries": seen, "ignored": ignored}, sort_keys=True),
    )
