"""The classifier in TensorFlow Serving's layout, in the object store. Plain module: no Dagster.

TF Serving loads ``<base_path>/<n>/saved_model.pb`` where ``<n>`` is a positive integer, and
reads which models and versions to serve from a ``model_config_list`` text file. ``publish``
copies one version of ``fashion_classifier``'s SavedModel there::

    serving/fashion_classifier/<n>/                          the SavedModel, as TF Serving loads it
    serving/fashion_classifier/<n>/assets.extra/labels.json  classes per head, image size, signature,
                                                             calibration (when the model has one)
    serving/models.config                                    names version <n> (written last)

``<n>`` comes from the model's version (``20250101T120000Z`` -> ``20250101120000``), so it grows
with time like TF Serving expects; a version string of another form gets the next integer.
``models.config`` is written last: a reader that follows it never finds half a model.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import layout
from ..classifier.artifacts import read_labels
from ..classifier.calibration import CALIBRATION
from ..classifier.labels import HEADS
from ..core import tf_runtime
from ..core.storage import ObjectStore

# Where TF Serving's pod has the model (a pod path, not a store key): the init container's emptyDir.
MODEL_BASE_PATH = str(PurePosixPath("/models", layout.SERVED_MODEL_NAME))
SIGNATURE = "serving_default"
_TIMESTAMP = re.compile(r"(\d{8})T(\d{6})Z")
_CONFIG_VERSION = re.compile(r"versions:\s*(\d+)")


@dataclass
class Published:
    number: int  # the integer version TF Serving sees
    source_version: str  # fashion_classifier's version (what the predictions table records)
    objects: int
    bytes: int
    config: str  # models.config's text
    reused: bool  # already published: nothing copied


def serving_number(version: str, existing: list[int]) -> int:
    """The integer TF Serving knows ``version`` by."""
    match = _TIMESTAMP.fullmatch(version)
    if match:
        return int(match.group(1) + match.group(2))
    return max(existing, default=0) + 1


def published_numbers(store: ObjectStore) -> dict[int, str]:
    """Published versions: integer -> the source model version recorded in their labels."""
    found: dict[int, str] = {}
    for obj in store.list(layout.SERVING_MODELS):
        number = layout.serving_version_number(obj.key)
        if number is not None and obj.key == layout.serving_labels(number):
            found[number] = json.loads(store.get_bytes(obj.key)).get("source_version", "")
    return found


def models_config(number: int, base_path: str = MODEL_BASE_PATH) -> str:
    """TF Serving's ``--model_config_file``: one model, exactly one version."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{layout.SERVED_MODEL_NAME}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        f"    model_version_policy {{ specific {{ versions: {number} }} }}\n"
        "  }\n"
        "}\n"
    )


def configured_number(store: ObjectStore) -> int:
    """The version ``models.config`` names; FileNotFoundError when nothing is published."""
    if not store.exists(layout.SERVING_CONFIG):
        raise FileNotFoundError(
            f"no published model: {store.uri(layout.SERVING_CONFIG)} is missing; materialise serving_model")
    match = _CONFIG_VERSION.search(store.get_bytes(layout.SERVING_CONFIG).decode())
    if not match:
        raise ValueError(f"{store.uri(layout.SERVING_CONFIG)} names no version")
    return int(match.group(1))


def describe_signature(saved_model_dir: str | Path) -> dict:
    """``serving_default``'s inputs and outputs: ``{"inputs": {name: {"dtype", "shape"}}, "outputs": ...}``
    (shape with None for free dimensions). TensorFlow loads the SavedModel to read it."""
    tf = tf_runtime.tensorflow()

    loaded = tf.saved_model.load(str(saved_model_dir))
    if SIGNATURE not in loaded.signatures:
        return {"inputs": {}, "outputs": {}, "signatures": sorted(loaded.signatures)}
    fn = loaded.signatures[SIGNATURE]
    inputs = {name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
              for name, spec in fn.structured_input_signature[1].items()}
    outputs = {name: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
               for name, spec in fn.structured_outputs.items()}
    return {"inputs": inputs, "outputs": outputs, "signatures": sorted(loaded.signatures)}


def signature_problems(signature: dict, image_size: int, classes: dict[str, list[str]]) -> list[str]:
    """What is wrong with a signature for our clients: one ``uint8 [N, S, S, 3]`` input, and one
    float output ``[N, classes]`` per head. Empty when it is right."""
    problems = []
    inputs = signature.get("inputs", {})
    if not inputs:
        return [f"no {SIGNATURE} signature (signatures: {signature.get('signatures')})"]
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} inputs, expected 1: {sorted(inputs)}")
    for name, spec in inputs.items():
        want = [None, image_size, image_size, 3]
        if spec["dtype"] != "uint8" or spec["shape"] != want:
            problems.append(f"input {name}: {spec['dtype']} {spec['shape']}, expected uint8 {want}")
    outputs = signature.get("outputs", {})
    for head in HEADS:
        spec = outputs.get(head)
        want = [None, len(classes[head])]
        if spec is None:
            problems.append(f"output {head} is missing (outputs: {sorted(outputs)})")
        elif not spec["dtype"].startswith("float") or spec["shape"] != want:
            problems.append(f"output {head}: {spec['dtype']} {spec['shape']}, expected float {want}")
    return problems


def _download(store: ObjectStore, prefix: str, folder: Path) -> None:
    for obj in store.list(prefix):
        target = folder / obj.key.removeprefix(prefix)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.get_bytes(obj.key))


def publish(store: ObjectStore, version: str, log=lambda message: None) -> Published:
    """Copy ``version``'s SavedModel to TF Serving's layout, record its signature beside it, then
    point ``models.config`` at it. A version already published is not copied again."""
    source = layout.model_saved_model(version)
    if not store.exists(source + "saved_model.pb"):
        raise FileNotFoundError(f"model {version} has no SavedModel: {store.uri(source)}saved_model.pb is missing")
    existing = published_numbers(store)
    reused = [n for n, v in existing.items() if v == version]
    number = reused[0] if reused else serving_number(version, list(existing))
    if not reused and number in existing:
        raise ValueError(f"serving version {number} already holds model {existing[number]!r}, not {version!r}")
    prefix = layout.serving_version(number)
    objects = nbytes = 0
    labels = read_labels(store, version)
    with tempfile.TemporaryDirectory(prefix="fashion-serving-") as tmp:
        local = Path(tmp, "saved_model")
        _download(store, source, local)
        signature = describe_signature(local)
        if not reused:
            files = sorted(p for p in local.rglob("*") if p.is_file())
            for path in files:
                data = path.read_bytes()
                store.put_bytes(prefix + path.relative_to(local).as_posix(), data)
                objects += 1
                nbytes += len(data)
            log(f"copied {objects} objects ({nbytes / 1e6:.1f} MB) of model {version} to {store.uri(prefix)}")
    document = {"source_version": version, "serving_version": number, "model_name": layout.SERVED_MODEL_NAME,
                "signature_name": SIGNATURE, "signature": signature,
                "heads": labels["heads"], "image_size": labels["image_size"]}
    if labels.get(CALIBRATION):  # temperatures and auto-tag thresholds: the gateway applies them
        document[CALIBRATION] = labels[CALIBRATION]
    store.put_bytes(layout.serving_labels(number), json.dumps(document, indent=2).encode(), "application/json")
    listed = list(store.list(prefix))  # what TF Serving's init container will copy, labels included
    objects, nbytes = len(listed), sum(o.size for o in listed)
    config = models_config(number)
    store.put_bytes(layout.SERVING_CONFIG, config.encode(), "text/plain")
    return Published(number, version, objects, nbytes, config, bool(reused))


def read_published_labels(store: ObjectStore, number: int) -> dict:
    key = layout.serving_labels(number)
    if not store.exists(key):
        raise FileNotFoundError(f"published version {number} has no {store.uri(key)}")
    return json.loads(store.get_bytes(key))


def fetch_published(store: ObjectStore, dest: str | Path) -> tuple[int, Path]:
    """The version ``models.config`` names, downloaded to ``dest`` in TF Serving's layout
    (``dest/models.config`` rewritten with ``dest`` as base path, ``dest/fashion_classifier/<n>/``):
    what the TF Serving pod's init container and the embedded gateway run."""
    number = configured_number(store)
    dest = Path(dest)
    model_dir = dest / layout.SERVED_MODEL_NAME / str(number)
    if not (model_dir / "saved_model.pb").is_file():
        partial = model_dir.with_name(f".{number}.partial")
        _download(store, layout.serving_version(number), partial)
        if not (partial / "saved_model.pb").is_file():
            raise FileNotFoundError(f"{store.uri(layout.serving_version(number))} holds no saved_model.pb")
        partial.rename(model_dir)
    (dest / "models.config").write_text(models_config(number, str((dest / layout.SERVED_MODEL_NAME).resolve())))
    return number, model_dir
