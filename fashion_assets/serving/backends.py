"""Where the gateway's images are classified. Plain module: no Dagster.

- :class:`EmbeddedBackend` (the default): the published SavedModel loaded in this process, behind
  a :class:`MicroBatcher`, so concurrent requests share one ``predict`` call.
- :class:`TFServingBackend`: TensorFlow Serving over gRPC (``PredictionService/Predict`` with the
  ``tensorflow-serving-api`` messages), pinned to the published version the gateway read the
  labels of.

Both take ``uint8 [N, S, S, 3]`` (what ``Preprocessor`` makes, the same decoding as the
``predictions`` asset) and ``classify`` gives per image the answer the ``predictions`` table holds
(``ModelInfo.answers`` of the model's probabilities: calibrated, top 5, the auto flag).

Why this module is long: the decoding (``Preprocessor``), the batching (``MicroBatcher``) and
both backends are the one contract of the gateway's stages (uint8 images in, the answers
``ModelInfo`` reads from the probabilities per head out); apart, each would restate the others'
shapes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .. import layout
from ..classifier.calibration import CALIBRATION, automatic, calibrated, head_calibration
from ..classifier.labels import HEADS
from ..core import tf_runtime
from ..predictions.inference import top_classes


@dataclass
class ModelInfo:
    source_version: str  # fashion_classifier's version, as in the predictions table
    serving_version: int | None  # the published integer version (None: served from models/ directly)
    heads: dict[str, list[str]]
    image_size: int
    input_name: str = "inputs"
    signature_name: str = "serving_default"
    calibration: dict = field(default_factory=dict)  # labels.json's "calibration"; empty: T = 1, never auto

    @property
    def labels(self) -> dict:
        """The part of ``labels.json`` that ``classifier.calibration`` reads."""
        return {"heads": self.heads, "image_size": self.image_size, CALIBRATION: self.calibration}

    def describe(self) -> dict:
        return {"model_version": self.source_version, "serving_version": self.serving_version,
                "model_name": layout.SERVED_MODEL_NAME, "image_size": self.image_size,
                "input": f"uint8 RGB [N, {self.image_size}, {self.image_size}, 3]",
                "heads": {h: list(self.heads[h]) for h in HEADS},
                CALIBRATION: {h: head_calibration(self.labels, h).to_json() for h in HEADS}}

    def answers(self, probs: dict[str, np.ndarray]) -> list[dict]:
        """Plain probabilities per head ``[N, classes]`` -> per image ``{head: [{"label",
        "confidence"}, ...]}``, top 5, best first, exactly as ``predictions.inference`` fills the
        table: calibrated (``classifier.calibration.calibrated``), ranked by ``top_classes``, and
        the first entry's ``"auto"`` is ``automatic`` on the calibrated top-1 (the table's
        ``<head>_auto``)."""
        labels = self.labels
        probs = calibrated({h: probs[h] for h in HEADS}, labels)
        answers: list[dict] = [{} for _ in range(len(probs[HEADS[0]]))]
        for head in HEADS:
            names, top_p = top_classes(probs[head], np.asarray(self.heads[head], dtype=object))
            auto = automatic(top_p[:, 0], labels, head).tolist()
            for i, answer in enumerate(answers):
                ranked = [{"label": n, "confidence": float(p)}
                          for n, p in zip(names[i].tolist(), top_p[i].tolist(), strict=True)]
                ranked[0]["auto"] = bool(auto[i])
                answer[head] = ranked
        return answers


class Preprocessor:
    """Image bytes -> ``uint8 [S, S, 3]`` with ``classifier.images.decode_and_resize``, the
    function the ``predictions`` pipeline maps over its images: compiled once for one image, and
    once for a batch (one call for many images costs half as much per image as one call each)."""

    def __init__(self, image_size: int):
        tf = tf_runtime.tensorflow()

        from ..classifier.images import decode_and_resize

        self.image_size = image_size
        self._fn = tf.function(lambda data: decode_and_resize(data, image_size),
                               input_signature=[tf.TensorSpec((), tf.string)], autograph=False)
        shape = tf.TensorSpec((image_size, image_size, 3), tf.uint8)
        self._batch_fn = tf.function(
            lambda datas: tf.map_fn(lambda data: decode_and_resize(data, image_size), datas,
                                    fn_output_signature=shape),
            input_signature=[tf.TensorSpec((None,), tf.string)], autograph=False)
        self._errors = (tf.errors.InvalidArgumentError, tf.errors.UnknownError)

    def __call__(self, data: bytes) -> np.ndarray:
        """Raises ``ValueError`` for data the decoder refuses (truncated, corrupt)."""
        tf = tf_runtime.tensorflow()

        try:
            return self._fn(tf.constant(data)).numpy()
        except self._errors:
            raise ValueError("truncated or corrupt image data") from None

    def batch(self, datas: np.ndarray) -> dict[str, np.ndarray]:
        """``datas`` (a 1-D object array of image bytes) -> ``{"images": uint8 [N, S, S, 3],
        "ok": bool [N]}`` in one call; when the decoder refuses one image, each is decoded
        alone, and a refused one is all zeros with ``ok`` False."""
        tf = tf_runtime.tensorflow()

        try:
            return {"images": self._batch_fn(tf.constant(datas.tolist(), tf.string)).numpy(),
                    "ok": np.ones(len(datas), bool)}
        except self._errors:
            images = np.zeros((len(datas), self.image_size, self.image_size, 3), np.uint8)
            ok = np.zeros(len(datas), bool)
            for i, data in enumerate(datas):
                with contextlib.suppress(ValueError):
                    images[i], ok[i] = self(data), True
            return {"images": images, "ok": ok}


@dataclass
class _Waiting:
    images: np.ndarray
    future: asyncio.Future


@dataclass
class BatchStats:
    calls: int = 0
    images: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)  # the last 1,000 batch sizes


class MicroBatcher:
    """Concurrent ``submit``s gathered into one ``call``: ``call`` takes the rows of
    all of them (an array, concatenated) and gives a dict of arrays or lists, one row per input
    row, which each ``submit`` gets its own rows of. The gateway runs two, in a pipeline: one decodes a batch
    of image bytes while the other runs the model on the batch decoded before.

    A batch goes as soon as ``call`` is free and nobody else is about to submit (``expect``
    counts requests still in an earlier stage), so a lone request waits for no one; under load,
    requests that arrive while a batch runs, or within ``max_delay_s`` of the first of the next
    one, join it, up to ``max_batch`` images. ``call`` runs on one worker thread: the event loop
    keeps accepting and decoding meanwhile.
    """

    def __init__(self, call: Callable[[np.ndarray], dict[str, Sequence]], max_batch: int = 64,
                 max_delay_s: float = 0.004, name: str = "predict"):
        self.call = call
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Waiting] | None = None
        self._task: asyncio.Task | None = None
        self._expected = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    def expect(self) -> None:
        """A request has started decoding: a batch may wait (``max_delay_s``) for it."""
        self._expected += 1

    def unexpect(self) -> None:
        self._expected = max(0, self._expected - 1)

    async def submit(self, images: np.ndarray) -> dict[str, Sequence]:
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run())
        future = loop.create_future()
        await self._queue.put(_Waiting(images, future))
        return await future

    async def _gather(self) -> list[_Waiting]:
        assert self._queue is not None
        waiting = [await self._queue.get()]
        count = len(waiting[0].images)
        deadline = time.monotonic() + self.max_delay_s
        while count < self.max_batch:
            if not self._queue.empty():
                item = self._queue.get_nowait()
            elif self._expected > 0 and (left := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            else:
                break
            waiting.append(item)
            count += len(item.images)
        return waiting

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = await self._gather()
            batch = np.concatenate([w.images for w in waiting]) if len(waiting) > 1 else waiting[0].images
            try:
                out = await loop.run_in_executor(self._executor, self.call, batch)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                for w in waiting:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            self.stats.calls += 1
            self.stats.images += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            self.stats.sizes = [*self.stats.sizes[-999:], len(batch)]
            start = 0
            for w in waiting:
                n = len(w.images)
                if not w.future.done():
                    w.future.set_result({key: rows[start:start + n] for key, rows in out.items()})
                start += n

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


class EmbeddedBackend:
    """The model in this process (``artifacts.LoadedModel``), micro-batched: one call runs the
    model on the batch and reads its answers (``ModelInfo.answers``, vectorised over the batch),
    on the batcher's thread, so the event loop does no per-image numpy work."""

    name = "embedded"

    def __init__(self, model, info: ModelInfo, max_batch: int = 64, max_delay_s: float = 0.004):
        self.info = info
        self._predict = model.predict
        self.batcher = MicroBatcher(self._answer_batch, max_batch, max_delay_s)
        self._predict(np.zeros((1, info.image_size, info.image_size, 3), np.uint8))  # trace before serving

    def _answer_batch(self, images: np.ndarray) -> dict[str, list[dict]]:
        return {"answers": self.info.answers(self._predict(images))}

    def expect(self) -> None:
        self.batcher.expect()

    def unexpect(self) -> None:
        self.batcher.unexpect()

    async def check(self) -> None:
        """Ready as soon as it is built (the model is loaded and traced)."""

    async def classify(self, images: np.ndarray) -> list[dict]:
        """``ModelInfo.answers`` of ``images``."""
        return (await self.batcher.submit(images))["answers"]

    async def close(self) -> None:
        await self.batcher.close()


class TFServingBackend:
    """TensorFlow Serving's ``PredictionService/Predict`` over gRPC. One request per gateway
    request (TF Serving batches on its side, ``--enable_batching``)."""

    name = "tfserving"

    def __init__(self, address: str, info: ModelInfo, timeout_s: float = 10.0):
        self.address = address
        self.info = info
        self.timeout_s = timeout_s
        self._channel = None
        self._stub = None

    def expect(self) -> None:
        pass

    def unexpect(self) -> None:
        pass

    def _connect(self):
        if self._stub is None:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc

            self._channel = grpc.aio.insecure_channel(self.address, options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024)])
            self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        return self._stub

    def request(self, images: np.ndarray):
        """The ``PredictRequest`` for ``images``: model name, signature, pinned version, one uint8 tensor."""
        tf = tf_runtime.tensorflow()
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = layout.SERVED_MODEL_NAME
        request.model_spec.signature_name = self.info.signature_name
        if self.info.serving_version is not None:
            request.model_spec.version.value = self.info.serving_version
        request.inputs[self.info.input_name].CopyFrom(tf.make_tensor_proto(images, dtype=tf.uint8))
        for head in HEADS:
            request.output_filter.append(head)
        return request

    async def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        tf = tf_runtime.tensorflow()

        response = await self._connect().Predict(self.request(images), timeout=self.timeout_s)
        out = {h: tf.make_ndarray(response.outputs[h]).astype(np.float32) for h in HEADS}
        for head, probs in out.items():
            if probs.shape != (len(images), len(self.info.heads[head])):
                raise RuntimeError(f"TF Serving answered {head} with shape {probs.shape}, expected "
                                   f"{(len(images), len(self.info.heads[head]))}: a different model?")
        return out

    async def classify(self, images: np.ndarray) -> list[dict]:
        """``ModelInfo.answers`` of ``images`` (one TF Serving request)."""
        return self.info.answers(await self.predict(images))

    async def check(self) -> None:
        """One prediction on a blank image: TF Serving is up and serves this version."""
        size = self.info.image_size
        await self.predict(np.zeros((1, size, size, 3), np.uint8))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
