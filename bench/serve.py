"""Benchmark: the online gateway (`fashion-assets serve`, embedded backend, a real process on
loopback) under concurrency 1, 8 and 32, next to bare batched `model.predict` on the same images
in the same run (by hand, not in CI).

    .venv/bin/python bench/serve.py [--images 1000] [--requests 600] [--model-dir data/store]
                                    [--catalog-size 44445] [--workers 1]

Each request uploads one real catalog photo (multipart, field `image`) and waits for its top 5
per head and its near-duplicates. The gateway's catalog is a SQLite database whose
`product_images` holds the benchmark's photos (hashed by the ingest's own `inspect_image`) and,
up to --catalog-size rows, random hashes: the near-duplicate index at the full catalog's size
(44,445 products; a lookup's cost does not depend on the hashes' values). The model is the
newest trained one if --model-dir points at a store that has one; otherwise an untrained network
of the production architecture (speed does not depend on the weights), published with
serving_model's code. Baselines, same images, same process as the load generator: bare
`model.predict` (Keras, batch 64) on the images preloaded as one uint8 tensor, and the batch path
(`classifier.images.batches`: decode + resize in tf.data, then predict), whose CPU per image is
printed beside the catalog's check of an upload (`check_image`: Pillow decode + perceptual hash),
which the gateway does and the batch path does not; their sum bounds the gateway's ratio. Goals
(issue 21) on 2 cores: p50 <= 5 ms and p99 <= 10 ms at concurrency 1 (near-duplicates included);
at 32, >= 0.8x the batch path. The load generator shares the machine with the gateway: both
figures include its cost, and each level prints the CPU a request took in each.
"""

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import DEFAULT_DATASET, REPO, add_json_argument, write_figures

from fashion_assets import layout
from fashion_assets.catalog.images import check_image, inspect_image
from fashion_assets.catalog.tables import product_images
from fashion_assets.classifier import artifacts
from fashion_assets.classifier.images import batches, load_array
from fashion_assets.classifier.network import build_classifier
from fashion_assets.core import database
from fashion_assets.core.storage import LocalObjectStore
from fashion_assets.serving import publish
from fashion_assets_tests.servers import gateway_process

VERSION = "20250101T000000Z"


def model_and_labels(args):
    if args.model_dir:
        with tempfile.TemporaryDirectory() as tmp:
            source = artifacts.load_latest(LocalObjectStore(args.model_dir), tmp)
            return source.keras_model, source.labels
    classes = {"master_category": 5, "sub_category": 21, "article_type": 40}
    model = build_classifier(classes, args.image_size)
    labels = artifacts.labels_document_from_classes({h: [f"{h}{i}" for i in range(n)] for h, n in classes.items()},
                                                    args.image_size)
    return model, labels


def catalog_database(path: Path, photos: list[tuple[int, bytes]], size: int) -> str:
    """A SQLite catalog for the gateway's near-duplicate index: ``photos`` as ingest describes
    them, then random 256-bit hashes up to ``size`` rows. Returns its URL."""
    url = f"sqlite:///{path}"
    engine = database.create_engine(url)
    database.ensure_schema(engine)
    rows = [dataclasses.asdict(inspect_image(product_id, data)) for product_id, data in photos]
    rng = np.random.default_rng(0)
    filler = range(10_000_000, 10_000_000 + max(0, size - len(rows)))
    rows += [{"id": i, "key": layout.catalog_image(i), "width": 224, "height": 224, "mode": "RGB", "format": "JPEG",
              "bytes": 1, "md5": "0" * 32, "phash": rng.bytes(32).hex()} for i in filler]
    with engine.begin() as conn:
        conn.execute(product_images.insert(), rows)
    engine.dispose()
    return url


BOUNDARY = "fashion-bench-boundary"


def upload_request(host: str, data: bytes) -> bytes:
    """One complete ``POST /v1/predict`` (multipart, field ``image``), encoded once up front."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def load(base: str, datas: list[bytes], concurrency: int, total: int) -> tuple[float, list[float]]:
    """``total`` single-image requests, ``concurrency`` at a time on keep-alive connections:
    (requests/s, latencies in s). The requests are encoded before the clock starts and answers
    are read as raw HTTP/1.1, so the load generator, which shares the cores with the gateway,
    spends as little of them as it can (an httpx client cost about as much CPU as the gateway's
    own HTTP handling)."""
    url = httpx.URL(base)
    requests = [upload_request(f"{url.host}:{url.port}", data) for data in datas]
    latencies: list[float] = []
    next_index = 0

    async def worker():
        nonlocal next_index
        reader, writer = await asyncio.open_connection(url.host, url.port)
        try:
            while next_index < total:
                i = next_index
                next_index += 1
                started = time.perf_counter()
                writer.write(requests[i % len(requests)])
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                assert status_line.split()[1] == b"200", (status_line, answer[:300])
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return total / wall, latencies


def session_cpu_s(port: int) -> float:
    """CPU seconds (user + system) used so far by the gateway on ``port``: its process and every
    process of its session (``serve --workers`` starts its workers there), read from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    leader = None
    stats = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        stats[int(proc.name)] = (int(fields[3]), (int(fields[11]) + int(fields[12])) / ticks)
        if b"serve" in cmdline and b"--port" in cmdline and cmdline[cmdline.index(b"--port") + 1] == str(port).encode():
            leader = int(proc.name)
    return sum(cpu for session, cpu in stats.values() if session == leader)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    parser.add_argument("--model-dir", help="a store folder with models/fashion_classifier/LATEST")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--workers", type=int, default=1,
                        help="serve --workers: gateway processes on one port, each with its model and index")
    parser.add_argument("--catalog-size", type=int, default=44_445,
                        help="rows of the gateway's product_images (the photos, then random hashes)")
    add_json_argument(parser)
    args = parser.parse_args()

    folder = Path(args.dataset) / "images"
    if not folder.is_dir():
        folder = REPO / "examples" / "sample-catalog" / "images"
    paths = sorted(folder.glob("*.jpg"))[: args.images]
    datas = [p.read_bytes() for p in paths]
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs; {len(datas):,} images from {folder}")

    work = Path(tempfile.mkdtemp(prefix="fashion-bench-serve-"))
    store = LocalObjectStore(work / "store")
    model, labels = model_and_labels(args)
    artifacts.save_model(store, model, labels, VERSION)
    published = publish.publish(store, VERSION)
    size = labels["image_size"]

    # Baselines, the same images.
    x = load_array(enumerate(datas), len(datas), size)
    model.predict(x[:128], batch_size=64, verbose=0)
    started = time.perf_counter()
    model.predict(x, batch_size=64, verbose=0)
    bare = len(x) / (time.perf_counter() - started)
    forward = artifacts.keras_predict(model)
    started, cpu = time.perf_counter(), time.process_time()
    for _, images in batches(enumerate(datas), size, 64):
        forward(images)
    batch_path = len(datas) / (time.perf_counter() - started)
    batch_cpu_ms = 1000 * (time.process_time() - cpu) / len(datas)
    # The catalog's check the gateway does per upload (full Pillow decode + perceptual hash), which
    # the batch path does not: its CPU bounds what the gateway can reach on the same cores.
    cpu = time.process_time()
    for data in datas:
        check_image(data)
    check_cpu_ms = 1000 * (time.process_time() - cpu) / len(datas)
    ceiling = batch_cpu_ms / (batch_cpu_ms + check_cpu_ms)
    print(f"{len(x):,} images at {size}px, {model.count_params():,} parameters, serving version {published.number}")
    print(f"  bare model.predict, preloaded tensor, batch 64      {bare:8.1f} images/s")
    print(f"  batch path: decode+resize (tf.data) + predict, 64   {batch_path:8.1f} images/s "
          f"(CPU {batch_cpu_ms:.2f} ms an image)")
    print(f"  the catalog's check of an upload (decode + hash)    CPU {check_cpu_ms:.2f} ms an image: with it, "
          f"the same cores reach at most {ceiling:.2f}x the batch path (no HTTP, no Python)")

    photos = [(int(p.stem), d) for p, d in zip(paths, datas, strict=True)]
    catalog_url = catalog_database(work / "catalog.sqlite", photos, args.catalog_size)
    print(f"gateway catalog: {max(args.catalog_size, len(datas)):,} rows of product_images "
          f"({len(datas):,} of them these photos)")
    env = {**os.environ, "FASHION_STORE_URL": str(work / "store"), "FASHION_CATALOG_URL": catalog_url,
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    workers = ["--workers", str(args.workers)] if args.workers != 1 else []
    with gateway_process(env, work / "gateway.log", *workers, cwd=REPO) as base:
        port = httpx.URL(base).port
        asyncio.run(load(base, datas, 8 * args.workers, 200 * args.workers))  # warm-up: every process
        answer = httpx.post(base + "/v1/predict", files={"image": ("x.jpg", datas[0])}).json()
        assert {"id": photos[0][0], "distance": 0} in answer["near_duplicates"], answer["near_duplicates"]
        print(f"gateway (embedded backend, --workers {args.workers}), one image per request:")
        levels = {}
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            gateway_cpu, own_cpu = session_cpu_s(port), time.process_time()
            rate, latencies = asyncio.run(load(base, datas, concurrency, args.requests))
            gateway_cpu, own_cpu = session_cpu_s(port) - gateway_cpu, time.process_time() - own_cpu
            p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
            print(f"  concurrency {concurrency:3d}: {rate:7.1f} requests/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
                  f"{rate / bare:.2f}x bare model.predict, {rate / batch_path:.2f}x the batch path; CPU a request: "
                  f"gateway {1000 * gateway_cpu / args.requests:.2f} ms, load generator "
                  f"{1000 * own_cpu / args.requests:.2f} ms")
            levels[str(concurrency)] = {"rate": rate, "p50_ms": p50, "p99_ms": p99, "vs_bare": rate / bare,
                                        "vs_batch_path": rate / batch_path,
                                        "gateway_cpu_ms": 1000 * gateway_cpu / args.requests}
    print(f"load average after: {os.getloadavg()}")
    write_figures(args.json, {"workers": args.workers, "bare": bare, "batch_path": batch_path,
                              "batch_cpu_ms": batch_cpu_ms, "check_cpu_ms": check_cpu_ms, "check_bound": ceiling,
                              "concurrency": levels})


if __name__ == "__main__":
    main()
