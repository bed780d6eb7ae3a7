"""Dagster wiring of the serving stage: ``serving_model`` publishes the newest
``fashion_classifier`` in TensorFlow Serving's layout (``serving/publish.py``), and a blocking
check verifies its ``serving_default`` signature is what the gateway and TF Serving's clients
send and read."""

import tempfile
import time
from pathlib import Path

import dagster as dg

from .. import layout
from ..classifier.artifacts import latest_version
from ..resources import ObjectStoreResource
from .publish import (
    SIGNATURE,
    configured_number,
    describe_signature,
    publish,
    read_published_labels,
    signature_problems,
)


def _signature_text(signature: dict) -> str:
    def line(name, spec):
        return f"{name}: {spec['dtype']} {spec['shape']}"

    inputs = ", ".join(line(n, s) for n, s in signature.get("inputs", {}).items())
    outputs = ", ".join(line(n, s) for n, s in sorted(signature.get("outputs", {}).items()))
    return f"{SIGNATURE}({inputs}) -> {outputs}"


@dg.asset(
    deps=["fashion_classifier"],
    group_name="serving",
    # Published as soon as a new model lands (fashion_automation), so the gateway and TF
    # Serving pick it up without anyone clicking.
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"tensorflow", "s3"},
)
def serving_model(context: dg.AssetExecutionContext, store: ObjectStoreResource) -> dg.MaterializeResult:
    """The newest classifier in TensorFlow Serving's layout: ``serving/fashion_classifier/<n>/``
    (a SavedModel; ``<n>`` an integer) and ``serving/models.config`` naming it, for TF Serving
    and the gateway (``fashion-assets serve``)."""
    store_ = store.get_store()
    started = time.monotonic()
    version = latest_version(store_)
    published = publish(store_, version, log=context.log.info)
    seconds = time.monotonic() - started
    doc = read_published_labels(store_, published.number)
    context.log.info(
        f"Published model {version} as serving version {published.number}: {published.objects} objects, "
        f"{published.bytes / 1e6:.1f} MB in {seconds:.1f} s ({published.bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s)"
        + (" (already published: only models.config rewritten)" if published.reused else ""))
    return dg.MaterializeResult(metadata={
        "serving_version": published.number,
        "model_version": version,
        "signature": _signature_text(doc["signature"]),
        "image_size": doc["image_size"],
        "classes": ", ".join(f"{h} {len(c)}" for h, c in doc["heads"].items()),
        "size_bytes": dg.MetadataValue.int(published.bytes),
        "objects": published.objects,
        "path": dg.MetadataValue.path(store_.uri(layout.serving_version(published.number))),
        "models_config": dg.MetadataValue.md(f"```\n{published.config}```"),
        "seconds": round(seconds, 2),
    })


@dg.asset_check(asset=serving_model, blocking=True)
def serving_signature(store: ObjectStoreResource) -> dg.AssetCheckResult:
    """The published SavedModel, loaded from the store as TF Serving would, has a
    ``serving_default`` signature taking ``uint8 [N, S, S, 3]`` and returning the three heads."""
    store_ = store.get_store()
    number = configured_number(store_)
    doc = read_published_labels(store_, number)
    prefix = layout.serving_version(number)
    with tempfile.TemporaryDirectory(prefix="fashion-serving-check-") as tmp:
        for obj in store_.list(prefix):
            target = Path(tmp, obj.key.removeprefix(prefix))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store_.get_bytes(obj.key))
        signature = describe_signature(tmp)
    problems = signature_problems(signature, int(doc["image_size"]), doc["heads"])
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"serving_version": number, "signature": _signature_text(signature),
                  "problems": "; ".join(problems) or "none"},
    )
