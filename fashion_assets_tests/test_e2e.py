"""End to end, the way users touch it: `dagster dev` (webserver + daemon) as real processes,
PostgreSQL catalog, S3 endpoint. A query file dropped into the store becomes a partition and a
run of image_set; declarative automation then materialises augmented_set and predictions.
Everything is asserted through the GraphQL API and the store, and stopped cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from fashion_assets.queries import QueryRegistry

from .catalog_files import make_dataset
from .servers import free_port

BIN = Path(sys.executable).parent
TINY_MODEL = ("ops:\n  fashion_classifier:\n    config: {epochs: 1, image_size: 32, batch_size: 4, "
              "min_examples: 1, validation_fraction: 0.3}\n")

MATERIALIZATIONS = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) { partition runId } }
  }
}"""


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.load(response)
    assert "errors" not in body, body
    return body["data"]


def materialized(url: str, asset: str, partition: str | None) -> bool:
    data = graphql(url, MATERIALIZATIONS, {"key": {"path": [asset]}, "partitions": [partition] if partition else None})
    return bool(data["assetOrError"].get("assetMaterializations"))


@pytest.fixture
def dagster_dev(production, tmp_path):
    """`dagster dev` on loopback with its own DAGSTER_HOME, a catalog and a tiny trained model."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **production.env(make_dataset(tmp_path / "dataset")), "DAGSTER_HOME": str(home)}
    materialize = [BIN / "dagster", "asset", "materialize", "-m", "fashion_assets.definitions"]
    subprocess.run([*materialize, "--select", "products,product_images"], env=env, check=True, capture_output=True)
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL)
    subprocess.run([*materialize, "--select", "fashion_classifier", "-c", tmp_path / "tiny.yaml"], env=env,
                   check=True, capture_output=True)

    port = free_port()
    log = open(tmp_path / "dagster-dev.log", "wb")
    # Its own process group (what `set -m` gives a shell script), so SIGTERM reaches the
    # webserver, the daemon and the code server together.
    process = subprocess.Popen(
        [BIN / "dagster", "dev", "-m", "fashion_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/server_info", timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError("dagster dev did not start:\n" + (tmp_path / "dagster-dev.log").read_text()[-3000:])
            time.sleep(1)
    yield url, production, tmp_path / "dagster-dev.log"

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the webserver, daemon and code server go with it
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("processes of dagster dev were still running 30 s after SIGTERM")


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
