"""The online gateway: an ASGI app (Starlette, run by uvicorn) in front of a backend. Plain
module: no Dagster (``serving/cli.py`` resolves the store from the environment and starts it).

    GET  /healthz      200 once the model is loaded (and TF Serving answers), 503 before
    GET  /v1/model     version, image size, heads with their classes
    POST /v1/predict   multipart field ``image`` (one file, or several), or JSON ``{"url": ...}``,
                       ``{"key": ...}``, ``{"urls": [...]}``, ``{"keys": [...]}``; a key
                       ``image-sets/<name>/images/<id>.jpg`` with ``"version": V`` (a number, a
                       digest or "latest") reads product <id>'s photo as set version V holds it
                       (any other key is read as it is)

An answer is ``{"model_version", "serving_version", "predictions": {head: [{"label",
"confidence", "auto"}, {"label", "confidence"}, ...5]}, "near_duplicates": [{"id", "distance"},
...]}``: calibrated confidences, best first, ``auto`` on each head's first entry (the tag may be
applied without a person), and the catalog products whose photo is a near-duplicate of the image
(``near_duplicates.py``; the key is absent when the gateway was given no catalog). A batch answers
``{"model_version", "serving_version", "results": [{"input", "predictions", "near_duplicates"},
...]}`` in input order. A bad input is a 4xx with ``{"error": "<what, naming the input>"}``, and
nothing is predicted for any input of that request.

Why this module is long: the app's lifecycle (the model, the near-duplicate index and its
refresh), its three endpoints and the reading of the three input forms share one object (the
backend, the index, the HTTP client, the limits); split, each part would reach into the others'
state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import layout
from ..catalog.images import ImageRejected, check_image
from ..classifier.artifacts import latest_version, load_local, load_version, read_labels
from ..classifier.calibration import CALIBRATION
from ..core.parallel import usable_cores
from ..core.storage import ObjectStore
from ..image_sets.versions import NoSuchVersion, PhotoKeys
from .backends import EmbeddedBackend, MicroBatcher, ModelInfo, Preprocessor, TFServingBackend
from .inputs import FetchPolicy, InputError, fetch_url, read_key, shown_key, shown_url
from .near_duplicates import CatalogIndex
from .publish import configured_number, fetch_published, read_published_labels

log = logging.getLogger("fashion_assets.serving")
MAX_ITEMS = 32  # images in one request
# The status of each of the catalog's reasons to refuse an image (catalog.images.ImageRejected.kind).
REFUSED = {"empty": 422, "unreadable": 415, "format": 415, "pixels": 413, "corrupt": 422}


@dataclass
class GatewayConfig:
    backend: str = "embedded"  # embedded | tfserving
    tfserving: str = "127.0.0.1:8500"
    policy: FetchPolicy = field(default_factory=FetchPolicy)
    max_items: int = MAX_ITEMS
    max_batch: int = 64
    max_delay_s: float = 0.004
    workdir: str | None = None  # where the embedded backend downloads the model; a temporary folder
    near_duplicates_refresh_s: float = 30.0  # how often product_images' fingerprint is compared
    check_workers: int = 0  # threads that check (Pillow decode + perceptual hash) uploads; 0: one per core
    # Take connections only once the model answers (``serve --workers``: the other processes on
    # the port take them meanwhile) instead of at once, with /healthz saying "loading".
    serve_when_ready: bool = False


def published_info(store: ObjectStore) -> ModelInfo | None:
    """The published version's description, or None when nothing is published."""
    try:
        number = configured_number(store)
    except FileNotFoundError:
        return None
    doc = read_published_labels(store, number)
    inputs = list(doc.get("signature", {}).get("inputs", {})) or ["inputs"]
    return ModelInfo(doc["source_version"], number, doc["heads"], int(doc["image_size"]), inputs[0],
                     doc.get("signature_name", "serving_default"), doc.get(CALIBRATION) or {})


def load_backend(store: ObjectStore, config: GatewayConfig, workdir: str):
    """The configured backend, with its model (embedded) or its model's description (tfserving)."""
    info = published_info(store)
    if config.backend == "tfserving":
        if info is None:
            raise FileNotFoundError("the tfserving backend needs a published model (materialise serving_model)")
        return TFServingBackend(config.tfserving, info)
    if info is not None:
        number, model_dir = fetch_published(store, workdir)
        model = load_local(model_dir, info.labels, info.source_version)
        log.info(f"embedded backend: published version {number} (model {info.source_version}) from {store.url}")
    else:
        # Nothing published yet (right after `make demo`): the newest trained model, as is.
        version = latest_version(store)
        labels = read_labels(store, version)
        model = load_version(store, version, workdir)
        info = ModelInfo(version, None, labels["heads"], int(labels["image_size"]),
                         calibration=labels.get(CALIBRATION) or {})
        log.warning(f"embedded backend: no published model in {store.url}; serving model {version} from "
                    f"{layout.MODELS} directly (materialise serving_model to publish it)")
    return EmbeddedBackend(model, info, config.max_batch, config.max_delay_s)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413 before the app reads it all."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise InputError(413, _too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited, send)


def _too_large_message(max_bytes: int) -> str:
    return f"request body is over the {max_bytes:,}-byte limit"


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": _too_large_message(max_bytes)}, status_code=413)


class Gateway:
    def __init__(self, store: ObjectStore, config: GatewayConfig, backend=None, catalog: CatalogIndex | None = None):
        self.store = store
        self.photo_keys = PhotoKeys(store)
        self.config = config
        self.backend = backend
        self.catalog = catalog
        self._refresher: asyncio.Task | None = None
        self.decoder: MicroBatcher | None = None  # Preprocessor.batch over the images of concurrent requests
        # Pillow decodes and resizes without the GIL: a thread per core checks images in parallel.
        workers = config.check_workers or usable_cores()
        self._checkers = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="check")
        self.failure: str | None = None
        self.client = None
        self.served = 0
        self._started = time.monotonic()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            if self.catalog is not None:
                await self._load_index()
            workdir = self.config.workdir or self._tmp.name
            if self.backend is None:
                self.backend = await asyncio.to_thread(load_backend, self.store, self.config, workdir)
            preprocess = await asyncio.to_thread(Preprocessor, self.backend.info.image_size)
            self.decoder = MicroBatcher(preprocess.batch, self.config.max_batch, self.config.max_delay_s, "decode")
            # TF Serving may come up after us.
            await self._until_it_answers(self.backend.check, f"{self.backend.name} backend not answering yet")
            info = self.backend.info
            log.info(f"ready (process {os.getpid()}): {self.backend.name} backend, model {info.source_version} "
                     f"(serving version {info.serving_version}), {info.image_size} px")
            if self.catalog is not None:
                self._refresher = asyncio.create_task(self._keep_index_fresh())
        except Exception as exc:  # noqa: BLE001 - shown by /healthz, the process stays up
            self.failure = f"cannot load the model: {exc}"
            log.error(self.failure)

    async def _ready_or_stopped(self, task: asyncio.Task) -> bool:
        """Until ``start()`` is done (False) or stopped (True). A SIGTERM or SIGINT meanwhile
        (uvicorn only notes them while its lifespan starts) cancels it and is handed on to
        uvicorn's own handler, so a worker that waits for TF Serving or the database still stops
        when told to."""
        loop = asyncio.get_running_loop()
        saved: dict[int, object] = {}

        def stop(signum: int) -> None:
            task.cancel()
            if callable(handler := saved.get(signum)):
                handler(signum, None)

        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                saved[signum] = signal.getsignal(signum)
                loop.add_signal_handler(signum, stop, signum)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread: no signals here
            pass
        try:
            await asyncio.wait({task})
        finally:
            for signum, handler in saved.items():
                loop.remove_signal_handler(signum)
                signal.signal(signum, handler)
        return task.cancelled()

    async def _until_it_answers(self, call, failure: str):
        """``await call()`` until it succeeds (a service that comes up after us), with
        ``failure (the exception's type)`` shown by /healthz meanwhile; backs off from 0.5 s to 10 s."""
        delay = 0.5
        while True:
            try:
                result = await call()
            except Exception as exc:  # noqa: BLE001 - retried; /healthz says why meanwhile
                self.failure = f"{failure} ({type(exc).__name__})"
                log.warning(f"{self.failure}; retrying in {delay:.1f} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            else:
                self.failure = None
                return result

    async def _load_index(self) -> None:
        """The near-duplicate index's first load (before the gateway is ready), retried while the
        catalog database does not answer."""
        loaded = await self._until_it_answers(lambda: asyncio.to_thread(self.catalog.refresh),
                                              "cannot read product_images for the near-duplicate index")
        log.info(f"near-duplicate index: {loaded.photos:,} photos of product_images"
                 + (f" ({loaded.skipped} with a malformed hash left out)" if loaded.skipped else "")
                 + f"; compared every {self.config.near_duplicates_refresh_s:g} s")

    async def _keep_index_fresh(self) -> None:
        """Every ``near_duplicates_refresh_s``, in a worker thread: compare ``product_images``'
        fingerprint, reload the hashes when it changed. A failed poll keeps the index it has."""
        while True:
            await asyncio.sleep(self.config.near_duplicates_refresh_s)
            try:
                refreshed = await asyncio.to_thread(self.catalog.refresh)
            except Exception as exc:  # noqa: BLE001 - keep serving with the index we have
                log.warning(f"near-duplicate index not refreshed ({type(exc).__name__}); keeping the one loaded")
                continue
            if refreshed.changed:
                log.info(f"near-duplicate index: reloaded, {refreshed.photos:,} photos of product_images")

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self._tmp = tempfile.TemporaryDirectory(prefix="fashion-gateway-")
        self.client = httpx.AsyncClient(timeout=self.config.policy.timeout_s, follow_redirects=False,
                                        trust_env=False)
        task = asyncio.create_task(self.start())
        try:
            if self.config.serve_when_ready:
                if not await self._ready_or_stopped(task) and self.failure is not None:
                    # A worker that cannot serve exits (its supervisor starts another) rather than
                    # answering 503s beside a sibling that answers 200s.
                    raise RuntimeError(self.failure)
            yield
        finally:
            task.cancel()
            if self._refresher is not None:
                self._refresher.cancel()
            await self.client.aclose()
            if self.backend is not None:
                await self.backend.close()
            if self.decoder is not None:
                await self.decoder.close()
            self._checkers.shutdown(wait=False, cancel_futures=True)
            self._tmp.cleanup()

    @property
    def ready(self) -> bool:
        return self.failure is None and self.decoder is not None

    # --- endpoints ---------------------------------------------------------------------------

    async def healthz(self, request: Request) -> JSONResponse:
        if not self.ready:
            return JSONResponse({"status": "loading" if self.failure is None else "failing",
                                 "error": self.failure}, status_code=503)
        return JSONResponse({"status": "ok", "backend": self.backend.name,
                             "model_version": self.backend.info.source_version})

    async def model(self, request: Request) -> JSONResponse:
        if not self.ready:
            return JSONResponse({"error": self.failure or "the model is loading"}, status_code=503)
        return JSONResponse({**self.backend.info.describe(), "backend": self.backend.name})

    async def predict(self, request: Request) -> JSONResponse:
        started = time.monotonic()
        kind, count, status = "?", 0, 200
        try:
            if not self.ready:
                status = 503
                return JSONResponse({"error": self.failure or "the model is loading"}, status_code=503)
            kind, single, items = await self._inputs(request)
            count = len(items)
            answer = await self._classify(items)
            info = self.backend.info
            head = {"model_version": info.source_version, "serving_version": info.serving_version}
            if single:
                return JSONResponse({**head, **answer[0]})
            return JSONResponse({**head, "results": [{"input": what, **a}
                                                     for (what, _), a in zip(items, answer, strict=True)]})
        except InputError as exc:
            status = exc.status
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        except Exception as exc:  # noqa: BLE001 - never a traceback (or a secret) to the caller
            status = 500
            log.error(f"prediction failed: {type(exc).__name__}")
            return JSONResponse({"error": "internal error while predicting"}, status_code=500)
        finally:
            self.served += count if status == 200 else 0
            log.info(f"POST /v1/predict {status} {kind} x{count} {1000 * (time.monotonic() - started):.1f} ms"
                     f" (served {self.served:,} images, "
                     f"{self.served / max(time.monotonic() - self._started, 1e-9):.1f}/s since start)")

    # --- the work ----------------------------------------------------------------------------

    async def _inputs(self, request: Request) -> tuple[str, bool, list[tuple[str, bytes]]]:
        """``(kind, single, [(what, bytes)])`` from the request; InputError for anything else."""
        ctype = request.headers.get("content-type", "")
        limit = self.config.max_items
        if ctype.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=limit, max_fields=limit)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - starlette's MultiPartException and parser errors
                raise InputError(400, f"cannot read the multipart body: {exc}") from None
            files = form.getlist("image")
            if not files:
                raise InputError(400, "multipart body has no field 'image'")
            items = []
            for i, upload in enumerate(files):
                if isinstance(upload, str):
                    raise InputError(400, "field 'image' must be a file upload, not text")
                data = await upload.read()
                what = f"upload {upload.filename or i + 1}"
                if len(data) > self.config.policy.max_bytes:
                    raise InputError(413, f"{what}: {len(data):,} bytes is over the "
                                          f"{self.config.policy.max_bytes:,}-byte limit")
                items.append((what, data))
            return "upload", len(items) == 1, items
        if ctype.startswith("application/json"):
            try:
                body = await request.json()
            except InputError:
                raise
            except Exception:  # noqa: BLE001
                raise InputError(400, "the body is not valid JSON") from None
            fields = sorted(set(body) & {"url", "urls", "key", "keys"}) if isinstance(body, dict) else []
            version = body.get("version") if isinstance(body, dict) else None
            if version is not None and (fields not in (["key"], ["keys"]) or not isinstance(version, (str, int))):
                raise InputError(400, "'version' (a set version's number or digest) goes with "
                                      '{"key": "image-sets/<name>/images/<id>.jpg"} or {"keys": [...]}')
            if len(fields) != 1:
                raise InputError(400, 'send exactly one of {"url": ...}, {"urls": [...]}, {"key": ...}, {"keys": [...]}')
            [name] = fields
            values = body[name] if name.endswith("s") else [body[name]]
            if not isinstance(values, list) or not values:
                raise InputError(400, f"'{name}' must be a non-empty list")
            if len(values) > limit:
                raise InputError(413, f"'{name}' has {len(values)} items, over the limit of {limit}")
            if name.startswith("url"):
                datas = await asyncio.gather(*(fetch_url(self.client, v, self.config.policy) for v in values))
                whats = [shown_url(httpx.URL(v)) for v in values]
            else:
                if version is not None:
                    values = [await asyncio.to_thread(self._versioned_key, v, version) for v in values]
                datas = [await asyncio.to_thread(read_key, self.store, v, self.config.policy.max_bytes)
                         for v in values]
                whats = [f"key {v}" for v in values]
            return name.rstrip("s"), not name.endswith("s"), list(zip(whats, datas, strict=True))
        raise InputError(415, "send multipart/form-data with a file in field 'image', "
                              'or application/json {"url": ...} or {"key": ...}')

    def _versioned_key(self, key, version: str | int) -> str:
        """The key of product ``<id>``'s photo in set ``<name>`` at ``version``, for a key
        ``image-sets/<name>/images/<id>.jpg``."""
        named = layout.set_image_of(key) if isinstance(key, str) else None
        if named is None:
            raise InputError(400, f"with 'version', a key names a set's product: image-sets/<name>/images/<id>.jpg, "
                                  f"not {shown_key(key) if isinstance(key, str) else repr(key)}")
        name, product_id = named
        try:
            return self.photo_keys.key(name, version, product_id)
        except NoSuchVersion as exc:
            raise InputError(404, str(exc)) from None

    def _check(self, items: list[tuple[str, bytes]]) -> list[list[dict] | None]:
        """Each image checked by the catalog's own check (``catalog.images.check_image``: what
        the ingest refuses is refused here, for the same reason), which also gives its perceptual
        hash, and its near-duplicates in the catalog (None without a catalog); in a checker thread."""
        near = []
        for what, data in items:
            try:
                checked = check_image(data)
            except ImageRejected as exc:
                raise InputError(REFUSED[exc.kind], f"{what}: {exc}") from None
            near.append(None if self.catalog is None else self.catalog.lookup(checked.phash))
        return near

    async def _classify(self, items: list[tuple[str, bytes]]) -> list[dict]:
        """Per image ``{"predictions": ..., "near_duplicates": ...}`` (the latter with a catalog).

        Three stages, each its own batch of concurrent requests' images: the check on the checker
        threads, the model's decoding (``Preprocessor.batch``) on the decoder's thread, the model
        and the reading of its answers on the backend's; while the model runs one batch, the next
        is checked and decoded."""
        loop = asyncio.get_running_loop()
        self.backend.expect()
        try:
            self.decoder.expect()
            try:
                near = await loop.run_in_executor(self._checkers, self._check, items)
            finally:
                self.decoder.unexpect()
            decoded = await self.decoder.submit(np.array([data for _, data in items], object))
        finally:
            self.backend.unexpect()
        for (what, _), ok in zip(items, decoded["ok"].tolist(), strict=True):
            if not ok:
                raise InputError(422, f"{what}: truncated or corrupt image data")
        answers = await self.backend.classify(decoded["images"])
        return [{"predictions": predictions} if n is None else {"predictions": predictions, "near_duplicates": n}
                for predictions, n in zip(answers, near, strict=True)]


def create_app(store: ObjectStore, config: GatewayConfig | None = None, backend=None,
               catalog: CatalogIndex | None = None) -> Starlette:
    """The ASGI app; the model (and ``catalog``'s near-duplicate index) load in the background
    once the server starts."""
    # httpx logs every request's full URL at INFO: a presigned URL's signature is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    gateway = Gateway(store, config or GatewayConfig(), backend, catalog)
    app = Starlette(
        routes=[Route("/healthz", gateway.healthz), Route("/v1/model", gateway.model),
                Route("/v1/predict", gateway.predict, methods=["POST"])],
        lifespan=gateway.lifespan,
    )
    app.state.gateway = gateway
    app.add_middleware(BodyLimit, max_bytes=gateway.config.policy.max_bytes)
    return app
