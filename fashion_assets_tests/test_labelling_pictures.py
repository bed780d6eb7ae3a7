"""The pictures where people look: image_set's contact sheet, the gallery of images whose predicted
article type disagrees with the catalog (most confident first), the confusion matrix's captions."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFont

from fashion_assets import layout
from fashion_assets.classifier.evaluate import AXES_CAPTION, confusion_png, missing_glyphs
from fashion_assets.core.reporting import drawn
from fashion_assets.catalog.images import png_text, thumbnail_sheet
from fashion_assets.image_sets.versions import NoSuchVersion
from fashion_assets.labelling.pictures import (SHEET_DRAWING, SHEET_LAYOUT, SHEET_SHOWN, SHEET_TOTAL, SHEET_VERSION,
                                               disagreement_gallery, disagreements, set_contact_sheet)
from fashion_assets.predictions.table import predictions as predictions_table

from .test_labelling import SET_IDS, catalog_labels, image_set_all, write_predictions  # noqa: F401  (fixture)


def test_image_set_shows_a_contact_sheet(image_set_all):
    backend, _, metadata = image_set_all
    store = backend.store()
    png = store.get_bytes(layout.set_contact_sheet("all"))
    assert "![contact sheet](data:image/png;base64," in metadata["contact_sheet"]
    assert metadata["contact_sheet"].startswith("9 of 9 images")
    with Image.open(io.BytesIO(png)) as sheet:  # one row of 9 thumbnails of 96 px, captioned
        assert sheet.size == (9 * 100 + 4, 96 + 4 + 14 + 4)
        assert sheet.text == {SHEET_VERSION: metadata["version_digest"], SHEET_SHOWN: "9", SHEET_TOTAL: "9",
                              SHEET_LAYOUT: SHEET_DRAWING}


class ReadsRecorded:
    """A store that notes the keys read and the prefixes listed through it."""

    def __init__(self, store):
        self.store, self.read, self.listed = store, [], []

    def get_bytes(self, key):
        self.read.append(key)
        return self.store.get_bytes(key)

    def list(self, prefix):
        self.listed.append(prefix)
        return self.store.list(prefix)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_contact_sheet_of_the_same_version_is_reused_not_redrawn(image_set_all):
    """A run that makes no new version (a no-op) shows the stored sheet of that version; another
    version, another limit, another drawing or a stored object that is no PNG is drawn again."""
    backend, _, metadata = image_set_all
    store, digest, key = backend.store(), metadata["version_digest"], layout.set_contact_sheet("all")
    recorded = {SHEET_VERSION: digest, SHEET_SHOWN: "9", SHEET_TOTAL: "9", SHEET_LAYOUT: SHEET_DRAWING}
    marker = thumbnail_sheet([[("marker", store.get_bytes(layout.set_image("all", 1)))]], chunks=recorded)
    assert png_text(marker) == recorded
    store.put_bytes(key, marker, "image/png")
    reading = ReadsRecorded(store)
    reused = set_contact_sheet(reading, "all", version=digest)
    assert (reused.png, reused.shown, reused.total) == (marker, 9, 9)
    assert store.get_bytes(key) == marker
    assert (reading.read, reading.listed) == ([key], [])  # the sheet only: no version listing, no manifest

    for stored in (thumbnail_sheet([[("x", store.get_bytes(layout.set_image("all", 1)))]],
                                   chunks={**recorded, SHEET_LAYOUT: "an older drawing"}),
                   b"not a png", marker[:40]):
        store.put_bytes(key, stored, "image/png")
        redrawn = set_contact_sheet(store, "all", version=digest)
        assert png_text(redrawn.png) == recorded and store.get_bytes(key) == redrawn.png
        with Image.open(io.BytesIO(redrawn.png)) as sheet:
            assert sheet.size == (9 * 100 + 4, 96 + 4 + 14 + 4)

    fewer = set_contact_sheet(store, "all", limit=4, version=digest)
    assert (fewer.shown, png_text(fewer.png)[SHEET_SHOWN]) == (4, "4")
    with pytest.raises(NoSuchVersion, match="000000000000"):  # a version the set does not have is not drawn
        set_contact_sheet(store, "all", version="000000000000")


def test_disagreement_gallery_most_confident_first(image_set_all):
    backend, _, _ = image_set_all
    store, engine = backend.store(), backend.engine()
    write_predictions(engine, "all", SET_IDS)
    keys = {(i, 0): layout.set_image("all", i) for i in SET_IDS}
    found = disagreements(engine, "all")
    gallery = disagreement_gallery(store, found, "all", keys, limit=5)
    # Every image is called a T-shirt; 4 and 8 are T-shirts. Most confident (highest id) first.
    assert [(d.id, d.catalog, d.predicted, d.confidence) for d in found] == [
        (i, catalog_labels(i)["article_type"], "Tshirts", i / 10) for i in (9, 7, 6, 5, 3, 2, 1)]
    assert (gallery.shown, gallery.total) == (5, 7)
    with Image.open(io.BytesIO(store.get_bytes(layout.prediction_disagreements("all")))) as png:
        assert png.size == (5 * 140 + 4, 112 + 6 + 36 + 4)

    with engine.begin() as conn:  # the model now agrees everywhere: no gallery, the old one removed
        for i in SET_IDS:
            conn.execute(predictions_table.update().where(predictions_table.c.id == i)
                         .values(article_type_label=catalog_labels(i)["article_type"]))
    assert disagreements(engine, "all") == []
    assert disagreement_gallery(store, [], "all", keys) is None
    assert not store.exists(layout.prediction_disagreements("all"))


def test_confusion_matrix_captions_have_every_glyph():
    """Pillow's built-in font has no arrows: the old caption ('true ↓ predicted →') showed boxes."""
    font = ImageFont.load_default()
    assert missing_glyphs("true \u2193  predicted \u2192", font) == ["\u2192", "\u2193"]
    assert missing_glyphs(AXES_CAPTION, font) == []
    import numpy as np

    png = confusion_png(np.array([0, 1, 1]), np.array([0, 1, 0]), ["T\u00e9e", "Jeans"])  # é: not in the font
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (150 + 2 * 26 + 10,) * 2


def test_a_picture_that_cannot_be_drawn_is_a_warning_not_a_failed_step():
    """Pictures are drawn after the set or the predictions are committed: an image unreadable at
    that moment (seen with moto, whose copies of multipart objects fail botocore's checksum)
    leaves a warning and a line in the metadata, not a failed step over committed data."""
    warnings: list[str] = []

    def draw(name):
        raise OSError(f"cannot read image-sets/{name}/images/7.jpg")

    assert drawn(warnings.append, "contact sheet", draw, "red-shoes") == (
        None, "_the contact sheet could not be drawn: OSError (see the run's log)_")
    assert warnings == ["the contact sheet could not be drawn: OSError: cannot read image-sets/red-shoes/images/7.jpg"]
    assert drawn(warnings.append, "contact sheet", lambda name: f"sheet of {name}", "red-shoes") == (
        "sheet of red-shoes", None)
    assert len(warnings) == 1
