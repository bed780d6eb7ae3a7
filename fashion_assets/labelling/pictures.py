"""Pictures where people look: an image set's contact sheet (``image_set``'s metadata) and the
gallery of images whose predicted article type disagrees with the catalog (``predictions``'
metadata): the label-error candidates a labelling team should see first. Plain module: no
Dagster. Both are stored at their ``layout`` keys as PNG.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import sqlalchemy as sa
from PIL import Image, ImageDraw

from .. import layout
from ..catalog.images import png_text, thumbnail_sheet, to_rgb
from ..catalog.tables import products
from ..classifier.evaluate import drawable
from ..core.parallel import bounded_map
from ..core.storage import ObjectStore
from ..image_sets.export import read_manifest
from ..predictions.table import predictions as predictions_table

SHEET_LIMIT = 60  # thumbnails on a contact sheet
# PNG text chunks of a contact sheet: the set version it shows, how many thumbnails, of how many images.
SHEET_VERSION, SHEET_SHOWN, SHEET_TOTAL = "fashion-assets:set-version", "fashion-assets:shown", "fashion-assets:total"
SHEET_COLUMNS = 10
SHEET_THUMB = 96  # px
# And how a sheet was drawn: a change to the drawing changes this, so no older sheet is reused.
SHEET_LAYOUT, SHEET_DRAWING = "fashion-assets:layout", f"{SHEET_COLUMNS} columns of {SHEET_THUMB} px, captioned"
GALLERY_LIMIT = 40
GALLERY_COLUMNS = 8


@dataclass
class Sheet:
    png: bytes
    shown: int  # thumbnails drawn
    total: int  # images the set holds
    uri: str  # where it is stored


def set_contact_sheet(store: ObjectStore, name: str, limit: int = SHEET_LIMIT, workers: int = 8,
                      version: str | None = None) -> Sheet | None:
    """Up to ``limit`` thumbnails of the set (lowest ids first), each captioned with its product
    id, stored at ``layout.set_contact_sheet``; None for an empty set. With ``version`` (a set
    version's digest), the sheet shows that version and records it, with its image count and
    drawing; a stored sheet that records the same is reused as it is, before any manifest is
    read: a run that made no new version reads one PNG and draws nothing."""
    key = layout.set_contact_sheet(name)
    if version and store.exists(key):
        png = store.get_bytes(key)
        recorded = png_text(png)
        total = int(recorded[SHEET_TOTAL]) if recorded.get(SHEET_TOTAL, "").isdigit() else None
        if (total and recorded.get(SHEET_VERSION) == version and recorded.get(SHEET_LAYOUT) == SHEET_DRAWING
                and recorded.get(SHEET_SHOWN) == str(min(limit, total))):
            return Sheet(png, min(limit, total), total, store.uri(key))
    manifest = read_manifest(store, name, version).select(["id", "key"])
    if not manifest.num_rows:
        return None
    shown = manifest.sort_by("id").slice(0, limit).to_pylist()  # sorted in Arrow: no row objects for the rest
    fetched = dict(bounded_map(lambda r: (r["id"], store.get_bytes(r["key"])), shown, workers))  # any order
    images = [(str(r["id"]), fetched[r["id"]]) for r in shown]
    rows = [images[i:i + SHEET_COLUMNS] for i in range(0, len(images), SHEET_COLUMNS)]
    drawn_from = ({SHEET_VERSION: version, SHEET_SHOWN: str(len(shown)), SHEET_TOTAL: str(manifest.num_rows),
                   SHEET_LAYOUT: SHEET_DRAWING} if version else None)
    png = thumbnail_sheet(rows, thumb=SHEET_THUMB, chunks=drawn_from)
    store.put_bytes(key, png, "image/png")
    return Sheet(png, len(shown), manifest.num_rows, store.uri(key))


@dataclass
class Disagreement:
    id: int
    variant: int
    catalog: str
    predicted: str
    confidence: float


def disagreements(engine: sa.Engine, name: str) -> list[Disagreement]:
    """Images of the set whose predicted article type is not the catalog's, most confident first
    (ties by id): the likeliest label errors in the catalog, or the model's most confident mistakes."""
    p = predictions_table.c
    query = (sa.select(p.id, p.variant, products.c.article_type, p.article_type_label, p.article_type_confidence)
             .select_from(predictions_table.join(products, products.c.id == p.id))
             .where(p.image_set == name, p.article_type_label != products.c.article_type)
             .order_by(p.article_type_confidence.desc(), p.id, p.variant))
    with engine.connect() as conn:
        return [Disagreement(r.id, r.variant, r.article_type, r.article_type_label, float(r.article_type_confidence))
                for r in conn.execute(query)]


def gallery_png(tiles: list[tuple[list[str], bytes]], columns: int = GALLERY_COLUMNS, thumb: int = 112) -> bytes:
    """A grid of thumbnails, each with a few caption lines under it."""
    lines = max((len(c) for c, _ in tiles), default=0)
    cell_w, cell_h = thumb + 28, thumb + 6 + 12 * lines  # wider than the thumbnail: ~24 characters of caption
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (min(columns, len(tiles)) * cell_w + 4, rows * cell_h + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (captions, data) in enumerate(tiles):
        x, y = 4 + (n % columns) * cell_w, 4 + (n // columns) * cell_h
        with Image.open(io.BytesIO(data)) as img:
            tile = to_rgb(img)
            scale = thumb / max(tile.size)  # up or down: catalog photos are often 60x80
            tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))),
                               Image.Resampling.LANCZOS)
            sheet.paste(tile, (x + (thumb - tile.width) // 2, y + (thumb - tile.height) // 2))
        for i, text in enumerate(captions):
            draw.text((x, y + thumb + 2 + 12 * i), drawable(text[:24]), fill="black" if i else "dimgray")
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def disagreement_gallery(store: ObjectStore, found: list[Disagreement], name: str, keys: dict[tuple[int, int], str],
                         limit: int = GALLERY_LIMIT, workers: int = 8) -> Sheet | None:
    """A gallery of the ``limit`` most confident of ``found`` (``disagreements``: thumbnail, id,
    catalog label, predicted label, confidence) stored at ``layout.prediction_disagreements``.
    ``keys``: (id, variant) -> the image that was predicted. No disagreement: no gallery (and a
    stale one removed)."""
    key = layout.prediction_disagreements(name)
    if not found:
        if store.exists(key):
            store.delete(key)
        return None
    shown = [d for d in found if (d.id, d.variant) in keys][:limit]

    def tile(d: Disagreement) -> tuple[list[str], bytes]:
        ident = f"{d.id}" + (f" v{d.variant}" if d.variant else "")
        return ([f"{ident}  {d.confidence:.0%}", f"catalog: {d.catalog}", f"model: {d.predicted}"],
                store.get_bytes(keys[(d.id, d.variant)]))

    fetched = dict(bounded_map(lambda n: (n, tile(shown[n])), range(len(shown)), workers))  # any order
    png = gallery_png([fetched[n] for n in range(len(shown))])
    store.put_bytes(key, png, "image/png")
    return Sheet(png, len(shown), len(found), store.uri(key))
