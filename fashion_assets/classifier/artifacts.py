"""Saving and loading the classifier. The store layout (``fashion_assets.layout``) is a
contract; tools outside the project load the model from it:

    models/fashion_classifier/<version>/model.keras     Keras 3
    models/fashion_classifier/<version>/labels.json     classes per head, in output order; input size
    models/fashion_classifier/<version>/saved_model/    TensorFlow Serving (signature serving_default)
    models/fashion_classifier/LATEST                    the newest version string

Both models take raw RGB ``uint8`` images ``[N, S, S, 3]`` (S = ``labels.json``'s
``image_size``; resize before sending) and rescale inside; their outputs are named by head
(``master_category``, ``sub_category``, ``article_type``) and hold probabilities.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import layout
from ..core import tf_runtime
from ..core.storage import ObjectStore
from .labels import HEADS


def new_version() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


@dataclass
class LoadedModel:
    predict: Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 images -> probabilities per head
    labels: dict  # labels.json
    version: str
    keras_model: object | None = None

    @property
    def image_size(self) -> int:
        return int(self.labels["image_size"])

    def classes(self, head: str) -> list[str]:
        return self.labels["heads"][head]


def labels_document_from_classes(classes: dict[str, list[str]], image_size: int, extra: dict | None = None) -> dict:
    return {
        "heads": {h: list(classes[h]) for h in HEADS},
        "image_size": image_size,
        "input": f"uint8 RGB images [N, {image_size}, {image_size}, 3]; the model rescales them",
        **(extra or {}),
    }


def save_model(store: ObjectStore, model, labels: dict, version: str) -> dict[str, str]:
    """Write the ``.keras`` file, ``labels.json`` and the SavedModel under ``<version>/``, then
    point ``LATEST`` at it (last, so a reader never follows LATEST to half a model)."""
    with tempfile.TemporaryDirectory(prefix="fashion-model-") as tmp:
        keras_path = Path(tmp, "model.keras")
        model.save(keras_path)
        saved = Path(tmp, "saved_model")
        model.export(str(saved), format="tf_saved_model", verbose=False)
        store.put_bytes(layout.model_keras(version), keras_path.read_bytes(), "application/octet-stream")
        _put_folder(store, saved, layout.model_saved_model(version))
    return _publish(store, labels, version, keras=True)


def _put_folder(store: ObjectStore, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        store.put_bytes(prefix + path.relative_to(folder).as_posix(), path.read_bytes())


def _publish(store: ObjectStore, labels: dict, version: str, keras: bool) -> dict[str, str]:
    """``labels.json``, then ``LATEST`` (last, so a reader never follows LATEST to half a model)."""
    store.put_bytes(layout.model_labels(version), json.dumps(labels, indent=2).encode(), "application/json")
    store.put_bytes(layout.MODEL_LATEST, version.encode(), "text/plain")
    return {"keras": store.uri(layout.model_keras(version)) if keras else "",
            "saved_model": store.uri(layout.model_saved_model(version).rstrip("/")),
            "labels": store.uri(layout.model_labels(version))}


def save_saved_model_folder(store: ObjectStore, folder: Path, labels: dict, version: str) -> dict[str, str]:
    """An imported SavedModel, stored as it is (there is no ``.keras`` to make from it)."""
    _put_folder(store, folder, layout.model_saved_model(version))
    return _publish(store, labels, version, keras=False)


def keras_predict(model) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    tf = tf_runtime.tensorflow()

    # A compiled graph: twice the images/s of calling the model eagerly batch by batch. Traced
    # once, for any batch size: without the signature the first full batch traced again (0.23 s,
    # a tenth of a 4,000-image predictions shard on 2 cores).
    size = model.input.shape[1]
    forward = tf.function(lambda images: model(images, training=False),
                          input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)])

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        out = forward(tf.constant(images, dtype=tf.uint8))
        return {h: out[h].numpy().astype(np.float32) for h in HEADS}

    predict(np.zeros((1, size, size, 3), dtype=np.uint8))  # trace now: loading, not predicting, pays for it
    return predict


def _saved_model_predict(path: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    tf = tf_runtime.tensorflow()

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    [input_name] = list(serve.structured_input_signature[1])

    def predict(images: np.ndarray) -> dict[str, np.ndarray]:
        out = serve(**{input_name: tf.constant(images, dtype=tf.uint8)})
        return {h: out[h].numpy().astype(np.float32) for h in HEADS}

    predict.keepalive = loaded  # the signature needs its object alive
    return predict


def load_local(path: str | Path, labels: dict | None = None, version: str = "imported") -> LoadedModel:
    """A ``.keras`` file or a SavedModel folder on disk, with ``labels.json`` beside or inside it."""
    path = Path(path)
    if labels is None:
        for candidate in (path.parent / "labels.json", path / "labels.json", path.parent.parent / "labels.json"):
            if candidate.is_file():
                labels = json.loads(candidate.read_text())
                break
        else:
            raise FileNotFoundError(f"{path}: no labels.json beside it (classes per head, image_size)")
    if path.suffix == ".keras" and path.is_file():
        keras = tf_runtime.keras()

        model = keras.saving.load_model(path)
        return LoadedModel(keras_predict(model), labels, version, keras_model=model)
    if (path / "saved_model.pb").is_file():
        return LoadedModel(_saved_model_predict(path), labels, version)
    raise ValueError(f"{path}: neither a .keras file nor a SavedModel folder (saved_model.pb)")


def latest_version(store: ObjectStore) -> str:
    """The version LATEST points at."""
    if not store.exists(layout.MODEL_LATEST):
        raise FileNotFoundError(
            f"no model yet: {store.uri(layout.MODEL_LATEST)} is missing; materialise fashion_classifier")
    return store.get_bytes(layout.MODEL_LATEST).decode().strip()


def read_labels(store: ObjectStore, version: str) -> dict:
    """One version's ``labels.json``: classes per head in output order, input size, metrics."""
    return json.loads(store.get_bytes(layout.model_labels(version)))


def load_version(store: ObjectStore, version: str, workdir: str | Path) -> LoadedModel:
    """One version of the model from the store: its ``.keras`` file, or its SavedModel when it
    was imported as one."""
    local = Path(workdir, version)
    local.mkdir(parents=True, exist_ok=True)
    labels = read_labels(store, version)
    if store.exists(layout.model_keras(version)):
        (local / "model.keras").write_bytes(store.get_bytes(layout.model_keras(version)))
        return load_local(local / "model.keras", labels, version)
    saved_model = layout.model_saved_model(version)
    for obj in store.list(saved_model):
        target = local / "saved_model" / obj.key.removeprefix(saved_model)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get_bytes(obj.key))
    return load_local(local / "saved_model", labels, version)


def load_latest(store: ObjectStore, workdir: str | Path) -> LoadedModel:
    """The model LATEST points at."""
    return load_version(store, latest_version(store), workdir)


def fetch_to_local(uri: str, workdir: str | Path, s3_client=None) -> Path:
    """A model URI (local path, ``file://`` or ``s3://bucket/key``) as a local path; an S3
    SavedModel folder is downloaded whole, with a ``labels.json`` beside it if there is one."""
    if not uri.startswith("s3://"):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model_uri {uri}: no such file or folder")
        return path
    if s3_client is None:
        raise ValueError(f"model_uri {uri}: an s3:// URI needs the S3 store's credentials (FASHION_STORE_URL=s3://...)")
    bucket, _, key = uri[len("s3://"):].partition("/")
    key = key.rstrip("/")
    target = Path(workdir, "imported")
    paginator = s3_client.get_paginator("list_objects_v2")
    parent = key.rsplit("/", 1)[0] if "/" in key else ""
    wanted = [key, f"{parent}/labels.json" if parent else "labels.json"]
    found = False
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        for obj in page.get("Contents", []):
            if obj["Key"] == key or obj["Key"].startswith(key + "/"):
                found = True
                dest = target / Path(key).name / obj["Key"][len(key):].lstrip("/") if obj["Key"] != key \
                    else target / Path(key).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                s3_client.download_file(bucket, obj["Key"], str(dest))
    if not found:
        raise FileNotFoundError(f"model_uri {uri}: no such object or prefix")
    try:
        target.mkdir(parents=True, exist_ok=True)
        s3_client.download_file(bucket, wanted[1], str(target / "labels.json"))
    except Exception:  # labels.json may instead be inside a SavedModel folder
        pass
    return target / Path(key).name
