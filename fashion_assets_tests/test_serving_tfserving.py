"""The ``tfserving`` backend against a protocol stand-in: TF Serving itself could not run here.

TensorFlow Serving's server binary (``tensorflow_model_server``) is in no registry this machine
reaches (not on PyPI, not in Debian), so these tests start, in the test process, a real gRPC server
that implements ``tensorflow.serving.PredictionService`` with the ``tensorflow-serving-api``
service definitions and messages, and serves the SavedModel that ``serving_model`` published, the
way TF Serving does (model name, signature name and version checked, tensors as TensorProto). The
gateway runs as a real ``fashion-assets serve --backend tfserving`` process and talks to it over
gRPC. What this proves: our requests and our reading of the responses match TF Serving's published
API. What it cannot: TF Serving's own loading, batching and version policy.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from fashion_assets import layout
from fashion_assets.serving import publish

from .servers import free_port
from .test_serving import assert_same_as_table, gateway, pipeline  # noqa: F401  (the module's trained model)


class PredictionServiceStandIn(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``Predict`` as TF Serving answers it, for one model version loaded from its SavedModel."""

    def __init__(self, model_dir, number: int):
        self.loaded = tf.saved_model.load(str(model_dir))
        self.number = number
        self.requests: list[predict_pb2.PredictRequest] = []
        self.lock = threading.Lock()

    def Predict(self, request, context):  # noqa: N802 - the gRPC method's name
        with self.lock:
            self.requests.append(request)
        spec = request.model_spec
        if spec.name != layout.SERVED_MODEL_NAME:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({spec.name})")
        if spec.HasField("version") and spec.version.value != self.number:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"Servable not found for request: Specific({spec.name}, {spec.version.value})")
        signature_name = spec.signature_name or "serving_default"
        if signature_name not in self.loaded.signatures:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Serving signature key \"{signature_name}\" not found.")
        fn = self.loaded.signatures[signature_name]
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        if set(inputs) != set(fn.structured_input_signature[1]):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"input names {sorted(inputs)} do not match the signature")
        outputs = fn(**inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.signature_name = signature_name
        response.model_spec.version.value = self.number
        for name, value in outputs.items():
            if not request.output_filter or name in request.output_filter:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


@pytest.fixture(scope="module")
def stand_in(pipeline, tmp_path_factory):  # noqa: F811
    backend = pipeline[0]
    number, model_dir = publish.fetch_published(backend.store(), tmp_path_factory.mktemp("tfserving"))
    service = PredictionServiceStandIn(model_dir, number)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield f"127.0.0.1:{port}", service
    server.stop(grace=None)


def test_tfserving_backend_against_a_protocol_stand_in_not_tf_serving(pipeline, stand_in):  # noqa: F811
    """TF Serving could not run here (no binary in any reachable registry): the gateway's
    ``tfserving`` backend talks gRPC to a stand-in implementing PredictionService with the
    tensorflow-serving-api protos, serving the published SavedModel; its answers equal the
    ``predictions`` table's, and its requests are what TF Serving expects."""
    backend, dataset, _, rows = pipeline
    address, service = stand_in
    with gateway(backend, dataset, "--backend", "tfserving", "--tfserving", address) as (base, _):
        assert httpx.get(base + "/healthz").json()["backend"] == "tfserving"
        for row in rows[:8]:
            data = (dataset / "images" / f"{row['id']}.jpg").read_bytes()
            response = httpx.post(base + "/v1/predict", files={"image": ("x.jpg", data)})
            assert response.status_code == 200, response.text
            assert_same_as_table(response.json()["predictions"], row)
        keys = [layout.set_image("all", r["id"]) for r in rows[8:12]]
        many = httpx.post(base + "/v1/predict", json={"keys": keys}).json()["results"]
        for answer, row in zip(many, rows[8:12], strict=True):
            assert_same_as_table(answer["predictions"], row)

    last = service.requests[-1]
    number = publish.configured_number(backend.store())
    assert (last.model_spec.name, last.model_spec.signature_name, last.model_spec.version.value) == (
        "fashion_classifier", "serving_default", number)
    assert list(last.inputs) == ["image"] and sorted(last.output_filter) == sorted(
        ["master_category", "sub_category", "article_type"])
    tensor = last.inputs["image"]
    assert tensor.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in tensor.tensor_shape.dim] == [4, 32, 32, 3]
    assert tf.make_ndarray(tensor).dtype == np.uint8


def test_tfserving_backend_waits_for_tf_serving_and_says_so(pipeline):  # noqa: F811
    """With nothing listening at the address, /healthz is 503 naming the backend, not a crash
    (TF Serving may start after the gateway on Kubernetes). Stand-in setting, not TF Serving."""
    backend, dataset, _, _ = pipeline
    port, address = free_port(), f"127.0.0.1:{free_port()}"
    env = {**os.environ, **backend.env(dataset), "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen([sys.executable, "-m", "fashion_assets.cli", "serve", "--port", str(port),
                                "--backend", "tfserving", "--tfserving", address],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                if response.json().get("error"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.3)
        assert response.status_code == 503
        assert response.json() == {"status": "failing",
                                   "error": "tfserving backend not answering yet (AioRpcError)"}
        predict = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"key": "catalog/images/1.jpg"})
        assert (predict.status_code, predict.json()) == (
            503, {"error": "tfserving backend not answering yet (AioRpcError)"})
    finally:
        process.terminate()
        process.wait(timeout=20)
