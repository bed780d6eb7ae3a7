"""The UI a user sees, driven in Debian's Chromium (Playwright, no browser download): the asset
graph, image_set's partitions, a partition materialised from the launch dialog and its run
succeeding, then predictions' metadata (the Markdown tables render as tables), and the three
pictures people look at: image_set's contact sheet, predictions' gallery of disagreements with the
catalog, fashion_classifier's confusion matrix (each rendered: loaded, natural size > 0, the size
of the PNG in the store; an element screenshot of each is kept as picture-*.png).

Runs against the session's shared `dagster dev` (dagster_dev.py) with its own query partition.
Every step saves a screenshot under the test's tmp_path; a failing step saves one named
*-FAILED.png and its message says where.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from fashion_assets import layout
from fashion_assets.image_sets.registry import QueryRegistry

from .dagster_dev import graphql

# Every product: 1..12; 10, 11 and 12 have broken images, so the set holds 9 images of four
# article types, which a one-epoch model cannot tell apart: some predictions disagree with the
# catalog, so the disagreement gallery has pictures.
QUERY_NAME = "browser-all"
QUERY_SQL = "SELECT id FROM products"
IDS_WITH_IMAGES = {str(i) for i in range(1, 10)}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_S = 300  # one run on a busy 2-core machine, with slack

RUN_FIELDS = "runId status startTime endTime tags { key value }"
RUNS = """
query ($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs { results { %s } } } }""" % RUN_FIELDS
RUN = """query ($runId: ID!) { runOrError(runId: $runId) { ... on Run { %s } } }""" % RUN_FIELDS
LATEST_MATERIALIZATION = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) { ... on Asset { assetMaterializations(partitions: $partitions, limit: 1) { runId } } }
}"""
IN_PROGRESS = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}


def runs_tagged(url: str, tags: dict[str, str]) -> list[dict]:
    variables = {"tags": [{"key": k, "value": v} for k, v in tags.items()]}
    return graphql(url, RUNS, variables)["runsOrError"]["results"]


def run(url: str, run_id: str) -> dict:
    return graphql(url, RUN, {"runId": run_id})["runOrError"]


def finished_runs(url: str, tags: dict[str, str]) -> list[dict] | None:
    """The runs with these tags once none of them is queued or in progress; None before."""
    runs = runs_tagged(url, tags)
    return None if any(r["status"] in IN_PROGRESS for r in runs) else runs


def latest_materialization_run(url: str, asset: str, partition: str) -> str | None:
    data = graphql(url, LATEST_MATERIALIZATION, {"key": {"path": [asset]}, "partitions": [partition]})
    found = data["assetOrError"]["assetMaterializations"]
    return found[0]["runId"] if found else None


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, log: Path):
    """Poll the GraphQL API (the UI is not the oracle for what happened, only for what is shown)."""
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; dagster dev log: {log}")
        time.sleep(3)
    return found


class Steps:
    """Names each step of the flow and keeps a screenshot of it; a failing step's screenshot
    (and the dagster dev log) are named in the error."""

    def __init__(self, page: Page, folder: Path, log: Path):
        self.page, self.folder, self.log, self.count = page, folder, log, 0
        folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name.replace(' ', '-')}.png"
        try:
            yield
        except Exception as exc:
            failed = path.with_name(path.stem + "-FAILED.png")
            with contextlib.suppress(Exception):  # a crashed page must not hide the real error
                self.page.screenshot(path=failed, full_page=True)
            raise AssertionError(f"step '{name}' failed: {exc}\nscreenshot: {failed}\n"
                                 f"all screenshots: {self.folder}\ndagster dev log: {self.log}") from exc
        self.page.screenshot(path=path, full_page=True)


@pytest.fixture
def browser_page() -> Iterator[Page]:
    """A page in Debian's Chromium, closed (with the browser) whatever happens."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)  # the machine runs dagster dev, runs and Chromium on 2 cores
            # A fresh instance greets its first visitor with a newsletter dialog over the page.
            page.add_locator_handler(page.get_by_text("Join the Dagster community"),
                                     lambda: page.get_by_role("button", name="Skip").click())
            yield page
        finally:
            browser.close()


def open_asset_from_graph(page: Page, url: str, group: str, asset: str) -> None:
    """Asset graph → expand the group → select the asset → its page in the catalog."""
    page.goto(f"{url}/asset-groups")
    graph = page.get_by_role("img").filter(has_text=group)  # the lineage graph is one SVG
    graph.get_by_text(group, exact=True).click()
    graph.get_by_text(asset, exact=True).click()
    page.get_by_role("link", name="View in Asset Catalog").click()
    expect(page).to_have_url(re.compile(rf"/assets/{asset}\b"))


def check_picture(page: Page, key: str, alt: str, png: bytes, path: Path) -> None:
    """Metadata entry ``key`` holds a picture (Markdown; one this large is behind its *Show
    Markdown* link, in a dialog): the <img> has loaded a non-empty image of the size of the PNG in
    the store. Its screenshot is kept at ``path``."""
    row = metadata_row(page, key)
    expect(row).to_be_visible()
    dialog = None
    if row.get_by_text("[Show Markdown]").count():
        row.get_by_text("[Show Markdown]").click()
        dialog = page.get_by_role("dialog").filter(has_text=key)
    image = (dialog if dialog is not None else row).get_by_role("img", name=alt)
    expect(image).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    natural = image.evaluate("img => [img.naturalWidth, img.naturalHeight, img.src.length]")
    with Image.open(io.BytesIO(png)) as stored:
        assert natural[:2] == list(stored.size), (natural, stored.size)
    assert natural[2] > len("data:image/png;base64,") + 100
    image.screenshot(path=path)
    if dialog is not None:
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()


def metadata_row(page: Page, key: str):
    """The rendered value of one metadata entry: its row in the metadata table."""
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))


def test_materialise_a_partition_from_the_ui_and_read_its_predictions(dagster_dev, browser_page, tmp_path):
    url, backend, log = dagster_dev
    page = browser_page
    steps = Steps(page, tmp_path / "screenshots", log)

    # The query file makes the sensor add the partition and run it once (what a user gets by
    # dropping a file). Waiting for that run first keeps it from overlapping the UI's run.
    QueryRegistry(backend.store()).put(QUERY_NAME, QUERY_SQL)
    sensor_run = wait_for(lambda: finished_runs(url, {"fashion-assets/query": QUERY_NAME}), RUN_TIMEOUT_S,
                          "image_query_sensor's run", log)[0]
    assert sensor_run["status"] == "SUCCESS", f"image_query_sensor's run {sensor_run['runId']}: {sensor_run['status']}"

    with steps.step("asset graph to image_set"):
        open_asset_from_graph(page, url, "image_sets", "image_set")

    with steps.step("image_set partitions"):
        page.get_by_role("tab", name="Partitions").click()
        expect(page.get_by_text(QUERY_NAME, exact=True).first).to_be_visible()

    with steps.step("choose the partition in the launch dialog"):
        page.get_by_role("button", name="Materialize…").click()
        dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize image_set")
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_placeholder("Filter partitions").fill(QUERY_NAME)
        page.get_by_role("menuitem", name=QUERY_NAME).click()
        dialog.get_by_text("Launch runs to materialize image_set").click()  # closes the partition picker
        expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()

    with steps.step("launch and open the run"):
        dialog.get_by_role("button", name="Launch 1 run").click()
        expect(page.get_by_text(re.compile(r"Launched run \w+"))).to_be_visible()
        page.get_by_role("link", name="View", exact=True).click()
        expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}"))
    run_id = page.url.rsplit("/", 1)[-1].split("?")[0]

    with steps.step("run succeeds"):
        expect(page.get_by_text(f"partition: {QUERY_NAME}")).to_be_visible()
        outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
        expect(outcome).to_be_visible(timeout=RUN_TIMEOUT_S * 1000)
        assert outcome.inner_text() == "Success", f"run {run_id} ended {outcome.inner_text()}"
    ui_run = run(url, run_id)
    assert ui_run["status"] == "SUCCESS"
    assert {"key": "dagster/from_ui", "value": "true"} in ui_run["tags"], ui_run["tags"]
    assert run_id != sensor_run["runId"]

    # Declarative automation follows image_set with augmented_set and predictions. Which image_set
    # run it follows is timing: an update that lands while the downstream run is in flight is
    # folded into it, so wait for predictions of the partition and for its runs to settle.
    wait_for(lambda: latest_materialization_run(url, "predictions", QUERY_NAME)
             and finished_runs(url, {"dagster/partition": QUERY_NAME}), 2 * RUN_TIMEOUT_S, "predictions", log)

    with steps.step("asset graph to predictions"):
        open_asset_from_graph(page, url, "model", "predictions")
        page.get_by_role("tab", name="Partitions").click()
        page.get_by_text(QUERY_NAME, exact=True).first.click()
        expect(page.get_by_text("Materialized", exact=True)).to_be_visible()

    with steps.step("predictions metadata"):
        def metadata(key: str):
            return metadata_row(page, key)

        preview = metadata("preview").get_by_role("table")
        expect(preview.get_by_role("columnheader", name="article_type_label")).to_be_visible()
        body_rows = preview.get_by_role("row").filter(has=page.get_by_role("cell")).all()
        ids = {row.get_by_role("cell").first.inner_text() for row in body_rows}
        assert ids == IDS_WITH_IMAGES, ids
        for head in ("master_category", "sub_category", "article_type"):
            labels = metadata(f"labels_{head}").get_by_role("table")
            expect(labels.get_by_role("columnheader", name=head, exact=True)).to_be_visible()
        row_count = metadata("dagster/row_count").get_by_role("cell", name=str(len(IDS_WITH_IMAGES)), exact=True)
        expect(row_count).to_be_visible()
        # The page scrolls inside a panel: bring the tables (keys included) into the screenshot.
        page.get_by_role("cell", name="labels_master_category", exact=True).scroll_into_view_if_needed()

    page.screenshot(path=tmp_path / "screenshots" / "final.png", full_page=True)
    store = backend.store()
    pictures = tmp_path / "screenshots"

    with steps.step("predictions disagreement gallery"):
        check_picture(page, "disagreement_gallery", "disagreements",
                      store.get_bytes(layout.prediction_disagreements(QUERY_NAME)), pictures / "picture-disagreements.png")

    with steps.step("image_set contact sheet"):
        page.goto(f"{url}/assets/image_set?view=partitions")
        page.get_by_text(QUERY_NAME, exact=True).first.click()
        expect(page.get_by_text("Materialized", exact=True)).to_be_visible()
        check_picture(page, "contact_sheet", "contact sheet",
                      store.get_bytes(layout.set_contact_sheet(QUERY_NAME)), pictures / "picture-contact-sheet.png")

    with steps.step("fashion_classifier confusion matrix"):
        page.goto(f"{url}/assets/fashion_classifier?view=events")
        version = store.get_bytes(layout.MODEL_LATEST).decode()
        check_picture(page, "confusion_article_type", "confusion",
                      store.get_bytes(layout.model_confusion(version)), pictures / "picture-confusion.png")

    # Leave the shared server quiet (predictions' checks run after its materialisation), and
    # make sure nothing this partition ran failed behind the UI's back.
    partition_runs = wait_for(lambda: finished_runs(url, {"dagster/partition": QUERY_NAME}), RUN_TIMEOUT_S,
                              f"the runs of {QUERY_NAME} to finish", log)
    failed = {r["runId"]: r["status"] for r in partition_runs if r["status"] != "SUCCESS"}
    assert not failed, f"runs of {QUERY_NAME} did not succeed: {failed}\n" + log.read_text()[-4000:]
