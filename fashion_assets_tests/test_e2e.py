"""End to end, the way users touch it: `dagster dev` (webserver + daemon) as real processes,
PostgreSQL catalog, S3 endpoint. A query file dropped into the store becomes a partition and a
run of image_set; declarative automation then materialises augmented_set and predictions.
Everything is asserted through the GraphQL API and the store. The server is the session's shared
`dagster_dev` (dagster_dev.py), stopped cleanly at the end."""

import time

import sqlalchemy as sa

from fashion_assets.image_sets.registry import QueryRegistry

from .dagster_dev import graphql, materialized


def test_a_dropped_query_file_flows_through_to_predictions(dagster_dev):
    url, backend, log = dagster_dev
    QueryRegistry(backend.store()).put("e2e-apparel", "SELECT id FROM products WHERE master_category = 'Apparel'")

    waiting_for = ["image_set", "augmented_set", "predictions"]
    deadline = time.monotonic() + 420
    while waiting_for and time.monotonic() < deadline:
        if materialized(url, waiting_for[0], "e2e-apparel"):
            waiting_for.pop(0)
        else:
            time.sleep(3)
    assert not waiting_for, f"never materialised: {waiting_for}\n" + log.read_text()[-4000:]

    store = backend.store()
    assert store.exists("image-sets/e2e-apparel/manifest.parquet")
    assert store.exists("image-sets/e2e-apparel/predictions.parquet")
    with backend.engine().connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM predictions WHERE image_set = 'e2e-apparel'")).scalar_one()
    assert rows == 5  # the Apparel products with a readable image: 1, 4, 5, 8, 9

    sensors = graphql(url, """{ sensorsOrError(repositorySelector: {repositoryName: "__repository__",
        repositoryLocationName: "fashion_assets.definitions"}) { ... on Sensors { results { name
        sensorState { status } } } } }""")
    states = {s["name"]: s["sensorState"]["status"] for s in sensors["sensorsOrError"]["results"]}
    assert states == {"image_query_sensor": "RUNNING", "fashion_automation": "RUNNING"}
