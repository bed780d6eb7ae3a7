"""Augmentation from a declarative spec, reproducibly, on every core. Plain module: no Dagster.

A spec is data: an ordered list of albumentations transforms by name with their parameters,

    [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"rotate": [-15, 15], "scale": [0.9, 1.1]}}]

(a single ordered mapping ``{"HorizontalFlip": {...}, "Affine": {...}}`` is accepted too). The
same spec + seed + image gives byte-identical output on every run and machine with the same
library versions: each (image, variant) gets its own seed derived from the run's seed, so the
result does not depend on which worker handled it or in which order.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import multiprocessing
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import numpy as np
from PIL import Image

from ..catalog.images import thumbnail_sheet, to_rgb
from ..core.parallel import usable_cores

DEFAULT_SPEC: list[dict] = [
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"rotate": [-15, 15], "scale": [0.9, 1.1], "translate_percent": [-0.05, 0.05], "fill": 255, "p": 0.9}},
    {"RandomBrightnessContrast": {"brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.7}},
    {"HueSaturationValue": {"hue_shift_limit": 5, "sat_shift_limit": 15, "val_shift_limit": 10, "p": 0.5}},
]
JPEG_QUALITY = 90


class SpecError(ValueError):
    """The spec names a transform that does not exist or gives it a bad parameter."""


def normalize_spec(spec: Sequence[Mapping] | Mapping) -> list[dict]:
    """The spec as a list of ``{name: params}`` with one transform each, in order."""
    if isinstance(spec, Mapping):
        spec = [{name: params} for name, params in spec.items()]
    if not isinstance(spec, Sequence) or isinstance(spec, str | bytes):
        raise SpecError("the spec must be a list of {TransformName: {parameter: value}}")
    steps = []
    for position, step in enumerate(spec, start=1):
        if not isinstance(step, Mapping) or len(step) != 1:
            raise SpecError(f"step {position}: expected one {{TransformName: {{parameters}}}}, got {step!r}")
        [(name, params)] = step.items()
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise SpecError(f"step {position} ({name}): parameters must be a mapping, got {params!r}")
        steps.append({str(name): dict(params)})
    return steps


def _transform(name: str, params: dict, position: int):
    import albumentations as A

    cls = getattr(A, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
        raise SpecError(f"step {position}: {name!r} is not an albumentations transform")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise SpecError(f"step {position} ({name}): unknown parameter(s) {', '.join(unknown)}; "
                        f"accepted: {', '.join(sorted(accepted))}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    except Exception as exc:  # albumentations validates with pydantic: show its complaints, briefly
        lines = str(exc).splitlines()
        complaints = [f"{field.split('.')[0]}: {message.strip().split(' [')[0]}"
                      for field, message in zip(lines, lines[1:], strict=False)
                      if field and not field.startswith(" ") and message.startswith("  ")]
        detail = "; ".join(dict.fromkeys(complaints)) or (lines[0] if lines else type(exc).__name__)
        raise SpecError(f"step {position} ({name}): bad parameters {params}: {detail}") from None


def build_pipeline(spec: Sequence[Mapping] | Mapping):
    """An ``albumentations.Compose`` for the spec; raises :class:`SpecError` before any work."""
    import albumentations as A

    steps = normalize_spec(spec)
    transforms = [_transform(name, params, i) for i, step in enumerate(steps, 1) for name, params in step.items()]
    return A.Compose(transforms)


def spec_hash(spec: Sequence[Mapping] | Mapping, seed: int) -> str:
    """Names the output folder: a different spec or seed never mixes with another's images."""
    canonical = json.dumps({"spec": normalize_spec(spec), "seed": seed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def variant_seed(seed: int, product_id: int, variant: int) -> int:
    digest = hashlib.sha256(f"{seed}:{product_id}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def augment_image(pipeline, data: bytes, product_id: int, variants: int, seed: int) -> list[bytes]:
    """Decode (any accepted format or mode), augment ``variants`` times, encode as JPEG."""
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(to_rgb(img))
    outputs = []
    for k in range(variants):
        pipeline.set_random_seed(variant_seed(seed, product_id, k))
        out = pipeline(image=array)["image"]
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, "JPEG", quality=JPEG_QUALITY)
        outputs.append(buffer.getvalue())
    return outputs


# -- the process pool -----------------------------------------------------------------------

_worker_pipeline = None


def _init_worker(spec_json: str) -> None:
    global _worker_pipeline
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker: no oversubscription
    import cv2

    cv2.setNumThreads(1)
    _worker_pipeline = build_pipeline(json.loads(spec_json))


def _augment_chunk(chunk: list[tuple[int, bytes]], variants: int, seed: int) -> list[tuple[int, list[bytes]]]:
    return [(pid, augment_image(_worker_pipeline, data, pid, variants, seed)) for pid, data in chunk]


def augment_in_parallel(
    jobs: Iterable[tuple[int, bytes]],
    spec: Sequence[Mapping] | Mapping,
    variants: int,
    seed: int,
    workers: int | None = None,
    chunk_size: int = 32,
) -> Iterator[tuple[int, list[bytes]]]:
    """Augment ``(product_id, image bytes)`` jobs on ``workers`` processes (default: one per usable
    core, ``core.parallel.usable_cores``: a pod's CPU limit counts, not the node's cores).

    Yields ``(product_id, [variant bytes...])`` as chunks finish; at most ``2 x workers`` chunks
    are in flight, so memory stays bounded however many images come in.
    """
    build_pipeline(spec)  # fail here, in the caller, on a bad spec
    workers = workers or usable_cores()
    spec_json = json.dumps(normalize_spec(spec))
    # forkserver: workers start clean, not as forks of a process that runs threads (Dagster, TF).
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(spec_json,)) as pool:
        pending: set[Future] = set()

        def drain(block_until_one: bool) -> Iterator[tuple[int, list[bytes]]]:
            nonlocal pending
            done, pending = wait(pending, return_when=FIRST_COMPLETED) if block_until_one else (set(), pending)
            for future in done:
                yield from future.result()

        chunk: list[tuple[int, bytes]] = []
        for job in jobs:
            chunk.append(job)
            if len(chunk) == chunk_size:
                pending.add(pool.submit(_augment_chunk, chunk, variants, seed))
                chunk = []
                if len(pending) >= 2 * workers:
                    yield from drain(True)
        if chunk:
            pending.add(pool.submit(_augment_chunk, chunk, variants, seed))
        while pending:
            yield from drain(True)


def contact_sheet(rows: list[tuple[bytes, list[bytes]]], thumb: int = 112) -> bytes:
    """A PNG with one row per image: the original, then its variants."""
    return thumbnail_sheet([[(None, data) for data in (original, *variants)] for original, variants in rows], thumb)
