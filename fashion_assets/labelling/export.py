"""An image set handed to labelling: Label Studio tasks (with pre-annotations from the
``predictions`` table and the matching labelling configuration), COCO, or CSV. Plain module: no
Dagster; ``labelling.cli`` (``fashion-assets export``) wires it to the command line.

What goes out:

- ``label-studio``: a JSON list of tasks, one per image of the set, importable as is. ``data``
  holds the image URL (``image``), the product id and its three catalog labels; ``predictions``
  (only when the set has predictions) one pre-annotation per task: the model version, one
  ``choices`` result per head with its confidence, and the task's score (the article type's
  confidence). Beside it, the labelling configuration XML: the image and three ``Choices``
  groups whose classes are every value the catalog has for the head (plus any predicted one).
- ``coco``: COCO-style JSON: images, categories (``supercategory`` = the head), and one
  classification annotation (no box) per image and head, from the catalog labels.
- ``csv``: id, image, the three catalog labels, the predicted labels and confidences.

With a queue (``labelling.queue``: ``doubt`` or ``random``, at most ``limit`` images) only the
queue's images go out, in its order, each with its ``rank``, ``margin`` and ``queue_reason``:
in a Label Studio task's ``data``, on a COCO image, as CSV columns.

Image URLs: on S3 a presigned GET URL valid for ``expires_s``; on a local store Label Studio's
local-files form ``/data/local-files/?d=<path under its document root>`` (start Label Studio
with ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` = that root; docs/labelling.md). COCO and CSV
name the image by its store URI (a path, or ``s3://``), which does not expire.

Files are written to a temporary file beside the target and renamed, so a failure leaves
nothing half-written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from .. import layout
from ..catalog.tables import products
from ..classifier.labels import HEADS
from ..core.storage import ObjectStore, S3ObjectStore
from ..image_sets.versions import list_versions, read_version, resolve
from ..image_sets.registry import QueryRegistry
from ..predictions.table import predictions as predictions_table
from .queue import DEFAULT_SEED, Queued, QueueResult, build_queue

FORMATS = ("label-studio", "coco", "csv")
DEFAULT_EXPIRES_S = 7 * 24 * 3600  # a presigned URL's life: a labelling round of a week
IMAGE_FIELD = "image"  # the task data key the labelling config's <Image> reads ($image)
QUEUE_COLUMNS = ("rank", "margin", "queue_reason")  # a queued export's extra fields
HEAD_TITLES = {"master_category": "Master category", "sub_category": "Sub category", "article_type": "Article type"}


@dataclass
class Item:
    """One image of the set, as every format needs it."""

    id: int
    key: str
    width: int | None
    height: int | None
    catalog: dict[str, str | None]  # head -> the catalog's label
    name: str | None = None
    predicted: dict[str, tuple[str, float]] | None = None  # head -> (label, confidence)
    queued: Queued | None = None  # its place in the labelling queue, when the export has one


@dataclass
class SetForLabelling:
    name: str
    items: list[Item]
    model_version: str | None  # of the predictions, when the set has them
    classes: dict[str, list[str]] = field(default_factory=dict)  # head -> every class an annotator may pick
    set_version: int = 0  # the set version the items are from


@dataclass
class ExportResult:
    path: Path
    tasks: int
    with_predictions: int
    model_version: str | None
    config_path: Path | None = None
    queue: QueueResult | None = None
    set_version: int = 0


def load_set(store: ObjectStore, engine: sa.Engine, name: str, version: str | int | None = None) -> SetForLabelling:
    """The set's images and catalog labels (the manifest of ``version``, default the newest),
    its predictions of the original images (table ``predictions``, by product id) and the
    classes per head. ``ValueError`` naming the set when there is no such query, the set was
    never materialised or has no such version."""
    layout.check_name(name)
    if not list_versions(store, name) and not store.exists(layout.query(name)):
        known = ", ".join(sorted(QueryRegistry(store).checksums())) or "none"
        raise ValueError(f"unknown image set {name!r}: no query of that name (known: {known})")
    set_version = resolve(store, name, version)  # NoSuchVersion (a ValueError) says what there is
    manifest = read_version(store, set_version).to_pylist()
    items = [Item(row["id"], row["key"], row.get("width"), row.get("height"), {h: row.get(h) for h in HEADS},
                  row.get("product_display_name")) for row in manifest]
    columns = [predictions_table.c.id, predictions_table.c.model_version,
               *[predictions_table.c[f"{h}_{part}"] for h in HEADS for part in ("label", "confidence")]]
    query = sa.select(*columns).where(predictions_table.c.image_set == name, predictions_table.c.variant == 0,
                                      predictions_table.c.source == "original")
    with engine.connect() as conn:
        predicted = {r.id: r for r in conn.execute(query)} if sa.inspect(conn).has_table("predictions") else {}
        catalog_classes = {h: sorted(v for (v,) in conn.execute(sa.select(products.c[h]).distinct()) if v)
                           for h in HEADS}
    versions = sorted({r.model_version for r in predicted.values()})
    for item in items:
        if (row := predicted.get(item.id)) is not None:
            item.predicted = {h: (row._mapping[f"{h}_label"], float(row._mapping[f"{h}_confidence"])) for h in HEADS}
    classes = {h: sorted(set(catalog_classes[h]) | {i.catalog[h] for i in items if i.catalog[h]}
                         | {i.predicted[h][0] for i in items if i.predicted}) for h in HEADS}
    return SetForLabelling(name, items, versions[-1] if versions else None, classes, set_version.seq)


def local_files_url(store: ObjectStore, key: str, document_root: str | os.PathLike) -> str:
    """Label Studio's URL for a file under its ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``."""
    path = Path(store.uri(key)).resolve()
    try:
        relative = path.relative_to(Path(document_root).resolve())
    except ValueError:
        raise ValueError(f"document root {str(document_root)!r} does not hold the store's {path}: pass a folder "
                         "above the store (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)") from None
    return "/data/local-files/?d=" + quote(relative.as_posix())


def label_studio_url(store: ObjectStore, key: str, expires_s: int, document_root: str | os.PathLike | None) -> str:
    if isinstance(store, S3ObjectStore):
        return store.presigned_url(key, expires_s)
    return local_files_url(store, key, document_root if document_root is not None else store.url)


def label_studio_tasks(selection: SetForLabelling, url_of) -> list[dict]:
    tasks = []
    for item in selection.items:
        task = {"data": {IMAGE_FIELD: url_of(item.key), "product_id": item.id, "image_set": selection.name,
                         "product_display_name": item.name, **item.catalog, **queue_fields(item)}}
        if item.predicted:
            task["predictions"] = [{
                "model_version": selection.model_version,
                "score": round(item.predicted["article_type"][1], 6),
                "result": [{"from_name": head, "to_name": IMAGE_FIELD, "type": "choices",
                            "value": {"choices": [label]}, "score": round(confidence, 6)}
                           for head, (label, confidence) in item.predicted.items()],
            }]
        tasks.append(task)
    return tasks


def label_config(classes: dict[str, list[str]]) -> str:
    """Label Studio's labelling configuration: the image and one single-choice group per head."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE_FIELD, value=f"${IMAGE_FIELD}")
    for head in HEADS:
        ET.SubElement(view, "Header", value=HEAD_TITLES[head])
        choices = ET.SubElement(view, "Choices", name=head, toName=IMAGE_FIELD, choice="single", showInline="true",
                                required="true")
        for value in classes[head]:
            ET.SubElement(choices, "Choice", value=value)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def coco_document(selection: SetForLabelling, store: ObjectStore) -> dict:
    categories = {(h, c): n for n, (h, c) in enumerate(((h, c) for h in HEADS for c in selection.classes[h]), 1)}
    annotations = []
    for item in selection.items:
        for head in HEADS:
            if item.catalog[head]:
                annotations.append({"id": len(annotations) + 1, "image_id": item.id,
                                    "category_id": categories[(head, item.catalog[head])],
                                    "attributes": {"head": head}})
    return {
        "info": {"description": f"image set {selection.name}: catalog labels, one classification annotation per "
                                "image and head (supercategory = head)"},
        "images": [{"id": i.id, "file_name": store.uri(i.key), "width": i.width, "height": i.height,
                    **queue_fields(i)} for i in selection.items],
        "categories": [{"id": n, "name": c, "supercategory": h} for (h, c), n in categories.items()],
        "annotations": annotations,
    }


def queue_fields(item: Item) -> dict:
    """``rank``, ``margin`` (6 decimals; None without one) and ``queue_reason``; none unqueued."""
    if item.queued is None:
        return {}
    margin = item.queued.margin
    return {"rank": item.queued.rank, "margin": None if margin is None else round(margin, 6),
            "queue_reason": item.queued.reason}


def csv_text(selection: SetForLabelling, store: ObjectStore) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    queued = any(i.queued for i in selection.items)
    writer.writerow(["id", "image", *HEADS, *[f"predicted_{h}" for h in HEADS],
                     *[f"predicted_{h}_confidence" for h in HEADS], *(QUEUE_COLUMNS if queued else ())])
    for item in selection.items:
        predicted = item.predicted or {}
        fields = queue_fields(item)
        writer.writerow([item.id, store.uri(item.key), *[item.catalog[h] or "" for h in HEADS],
                         *[predicted[h][0] if h in predicted else "" for h in HEADS],
                         *[f"{predicted[h][1]:.6f}" if h in predicted else "" for h in HEADS],
                         *(("" if fields[c] is None else fields[c] for c in QUEUE_COLUMNS) if queued else ())])
    return buffer.getvalue()


def check_writable(path: Path) -> None:
    """Before any work: the folder exists and can be written; ``ValueError`` naming it if not."""
    if path.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: it is a folder")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {str(path)!r}: folder {str(folder)!r} is not writable")


def write_atomically(files: dict[Path, str]) -> None:
    """Every file to a temporary file beside it, then all renamed: all or nothing."""
    temporary: dict[Path, str] = {}
    try:
        for path, text in files.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temporary[path] = tmp
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
        for path, tmp in temporary.items():
            os.replace(tmp, path)
    except OSError as exc:
        raise ValueError(f"cannot write {exc.filename or ', '.join(map(str, files))}: {exc.strerror or exc}") from None
    finally:
        for tmp in temporary.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


def config_path_for(path: Path) -> Path:
    """Where the labelling configuration goes beside a Label Studio tasks file: ``<stem>.xml``."""
    return path.with_suffix(".xml") if path.suffix != ".xml" else path.with_name(path.name + ".config.xml")


def export_set(store: ObjectStore, engine: sa.Engine, name: str, fmt: str, out: str | os.PathLike,
               expires_s: int = DEFAULT_EXPIRES_S, document_root: str | os.PathLike | None = None,
               queue: str | None = None, limit: int | None = None, seed: int = DEFAULT_SEED,
               version: str | int | None = None) -> ExportResult:
    """Write set ``name`` in format ``fmt`` to ``out`` (and, for Label Studio, its configuration
    beside it: ``config_path_for``) at set ``version`` (default: the newest); with ``queue``,
    only the queue's images, in its order."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if expires_s <= 0:
        raise ValueError(f"expiry must be a positive number of seconds, not {expires_s}")
    if queue is None and limit is not None:
        raise ValueError(f"a limit ({limit}) needs a queue: --queue doubt or --queue random")
    path = Path(out).expanduser().absolute()
    check_writable(path)
    if fmt == "label-studio":
        check_writable(config_path_for(path))
    selection = load_set(store, engine, name, version)
    queued = None
    if queue is not None:
        queued = build_queue(engine, name, [i.id for i in selection.items], queue, limit, seed)
        by_id = {i.id: i for i in selection.items}
        selection.items = [by_id[q.id] for q in queued.chosen]
        for item, place in zip(selection.items, queued.chosen, strict=True):
            item.queued = place
    config_path = None
    if fmt == "label-studio":
        tasks = label_studio_tasks(selection, lambda key: label_studio_url(store, key, expires_s, document_root))
        config_path = config_path_for(path)
        files = {path: json.dumps(tasks, indent=1, ensure_ascii=False) + "\n",
                 config_path: label_config(selection.classes)}
    elif fmt == "coco":
        files = {path: json.dumps(coco_document(selection, store), indent=1, ensure_ascii=False) + "\n"}
    else:
        files = {path: csv_text(selection, store)}
    write_atomically(files)
    with_predictions = sum(1 for i in selection.items if i.predicted)
    return ExportResult(path, len(selection.items), with_predictions, selection.model_version, config_path, queued,
                        selection.set_version)
