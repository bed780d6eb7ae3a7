"""One `dagster dev` (webserver + daemon as real processes) for the whole test session, shared by
the end-to-end test and the browser test: starting it and training a model costs a minute or
more on a small machine, so it is paid once. Each test uses its own query partition.

Registered in conftest.py, together with a hook that runs the tests using it last, so the
server is not left ticking in the background while the rest of the suite runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

import pytest

from .catalog_files import make_dataset
from .servers import free_port

if TYPE_CHECKING:
    from .conftest import Backend

BIN = Path(sys.executable).parent
TINY_MODEL = ("ops:\n  fashion_classifier:\n    config: {epochs: 1, image_size: 32, batch_size: 4, "
              "min_examples: 1, validation_fraction: 0.3}\n")

MATERIALIZATIONS = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) { partition runId } }
  }
}"""


class DagsterDev(NamedTuple):
    url: str
    backend: Backend  # the PostgreSQL catalog and S3 store the server uses
    log: Path


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


@contextlib.contextmanager
def serve(backend: Backend, workdir: Path) -> Iterator[DagsterDev]:
    """`dagster dev` on loopback with its own DAGSTER_HOME, a catalog and a tiny trained model;
    stopped with SIGTERM to its process group, and every process of it checked gone."""
    home = workdir / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **backend.env(make_dataset(workdir / "dataset")), "DAGSTER_HOME": str(home)}
    (workdir / "tiny.yaml").write_text(TINY_MODEL)
    for selection in (["products,product_images"], ["fashion_classifier", "-c", workdir / "tiny.yaml"]):
        done = subprocess.run([BIN / "dagster", "asset", "materialize", "-m", "fashion_assets.definitions",
                               "--select", *selection], env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"materialising {selection[0]} failed:\n{done.stderr[-3000:]}"

    port = free_port()
    log_path = workdir / "dagster-dev.log"
    log = open(log_path, "wb")
    # dagster dev maps SIGTERM to its SIGINT handler, so a SIGINT ignored here (pytest run as a
    # background job of a script, or under nohup) would be inherited and make it ignore SIGTERM.
    sigint_ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if sigint_ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler becomes SIG_DFL across exec
    try:
        # Its own process group (what `set -m` gives a shell script), so SIGTERM reaches the
        # webserver, the daemon, the code server and the runs together.
        process = subprocess.Popen(
            [BIN / "dagster", "dev", "-m", "fashion_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
        )
    finally:
        if sigint_ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("dagster dev did not start:\n" + log_path.read_text()[-3000:]) from None
                time.sleep(1)
        yield DagsterDev(url, backend, log_path)
    finally:
        _stop(process)
        log.close()


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone when it failed to start
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
            return
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError("processes of dagster dev were still running 30 s after SIGTERM")


@pytest.fixture(scope="session")
def dagster_dev(postgres, s3_server, tmp_path_factory) -> Iterator[DagsterDev]:
    """The shared server, against its own PostgreSQL database and S3 bucket."""
    from .conftest import production_backend  # here, not at the top: conftest imports this module

    with serve(production_backend(postgres, s3_server), tmp_path_factory.mktemp("dagster_dev")) as dev:
        yield dev


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests using the shared server run last and together (stable order otherwise), so it
    starts late and is stopped as soon as the session ends."""
    items.sort(key=lambda item: "dagster_dev" in getattr(item, "fixturenames", ()))
