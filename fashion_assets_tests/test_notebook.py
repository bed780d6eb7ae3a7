"""examples/walkthrough.ipynb runs top to bottom on a real Jupyter kernel (nbclient + ipykernel)
against a throwaway catalog and store, on the sample catalog, and does what it says: the set holds
what its SQL selects, the pictures are shown inline, the exported tasks carry the model's
version."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import sqlalchemy as sa
from nbclient import NotebookClient

from fashion_assets import layout
from fashion_assets.core.storage import LocalObjectStore

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "walkthrough.ipynb"
SET = "small-accessories"
SQL = "SELECT count(*) FROM products JOIN product_images USING (id) WHERE article_type IN ('Belts', 'Sunglasses', 'Wallets')"


def test_the_walkthrough_runs_top_to_bottom(tmp_path, monkeypatch):
    for variable in ("FASHION_CATALOG_URL", "FASHION_STORE_URL", "FASHION_DATASET_DIR", "FASHION_QUERY_URL",
                     "FASHION_S3_ENDPOINT_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("WALKTHROUGH_DIR", str(tmp_path))
    monkeypatch.setenv("WALKTHROUGH_EPOCHS", "1")  # the flow, not the model, is under test
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the contact sheet, the augmented contact sheet, the disagreement gallery

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    with engine.connect() as conn:
        selected = conn.execute(sa.text(SQL)).scalar_one()
        without_image = conn.execute(sa.text(SQL.replace("JOIN product_images USING (id) ", ""))).scalar_one() - selected
        predicted = conn.execute(sa.text("SELECT count(*), min(model_version), max(model_version) FROM predictions "
                                         "WHERE image_set = :n"), {"n": SET}).one()
    engine.dispose()
    store = LocalObjectStore(tmp_path / "store")
    model = store.get_bytes(layout.MODEL_LATEST).decode()
    assert selected == 75 and tuple(predicted) == (75, model, model)
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"75 images in set '{SET}' ({without_image} selected without an image)" in text
    assert f"75 tasks (75 pre-annotated by {model})" in text

    tasks = json.loads((tmp_path / f"{SET}.label-studio.json").read_text())
    assert len(tasks) == 75 and {t["predictions"][0]["model_version"] for t in tasks} == {model}
    assert (tmp_path / f"{SET}.label-studio.xml").is_file()
