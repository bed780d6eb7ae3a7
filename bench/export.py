"""Benchmark: exporting an image set, against the baselines it must beat (run by hand, not in CI).

    .venv/bin/python bench/export.py [--dataset ../shared/datasets/fashion-product-images-small]

Starts a moto S3 server on loopback, ingests the dataset's images into it, then times, in the
same run, for one query selecting every product with an image (8,448 on the shared dataset):

  asset   the `image_set` materialisation (query + server-side copies + manifest)
  (b)     a bare loop of boto3 `copy_object` calls on a thread pool of the same size
  (a)     the notebook way: a sequential loop of get_object + put_object per image

twice: straight against moto, and through a proxy that adds 20 ms to every request (a typical
in-region S3 first-byte latency; moto answers in ~3 ms and saturates its CPU at ~270 requests/s
here, which hides what concurrency buys). Then the local-store path against a sequential
file-copy loop. Prints rates (images/s) and ratios; targets with latency: asset >= 0.8x (b) and
>= 10x (a). The sequential loop is timed on the first --naive-sample images (its rate does not
depend on how many).
"""

import argparse
import http.client
import http.server
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

from fashion_assets.catalog.assets import product_images, products  # noqa: E402
from fashion_assets.image_sets.assets import image_queries, image_set  # noqa: E402
from fashion_assets.image_sets.registry import QueryRegistry  # noqa: E402
from fashion_assets.resources import CatalogDatabase, CatalogSource, LocalStoreResource, S3StoreResource  # noqa: E402
from fashion_assets_tests import servers  # noqa: E402

QUERY = "SELECT p.id FROM products AS p JOIN product_images AS i ON i.id = p.id"
WORKERS = 32


class LatencyProxy:
    """A reverse proxy on loopback that waits ``delay`` seconds before forwarding each request."""

    def __init__(self, upstream_port: int, delay: float):
        local = threading.local()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                time.sleep(delay)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not hasattr(local, "conn"):
                    local.conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                local.conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = local.conn.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def materialize_set(resources: dict, name: str, instance: dg.DagsterInstance) -> tuple[float, int]:
    QueryRegistry(resources["store"].get_store()).put(name, QUERY)
    instance.add_dynamic_partitions(image_queries.name, [name])
    holder = {}

    def run():
        holder["result"] = dg.materialize([image_set], partition_key=name, resources=resources, instance=instance,
                                          run_config=QUIET)

    seconds = timed(run)
    [event] = holder["result"].get_asset_materialization_events()
    return seconds, event.materialization.metadata["dagster/row_count"].value


def s3_round(label: str, endpoint: str, bucket: str, base: dict, ids: list[int], naive_sample: int,
             instance: dg.DagsterInstance) -> dict:
    store_resource = S3StoreResource(url=f"s3://{bucket}/bench", endpoint_url=endpoint, region_name="us-east-1",
                                     max_concurrency=WORKERS)
    resources = {**base, "store": store_resource}
    client = store_resource.get_client()
    seconds, n = materialize_set(resources, f"{label}-asset", instance)
    asset_rate = n / seconds

    def bare_copy(product_id):
        client.copy_object(Bucket=bucket, Key=f"bench/bare-{label}/{product_id}.jpg",
                           CopySource={"Bucket": bucket, "Key": f"bench/catalog/images/{product_id}.jpg"})

    def bare():
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(bare_copy, ids))

    bare_rate = len(ids) / timed(bare)

    sample = ids[:naive_sample]

    def naive():
        for product_id in sample:
            body = client.get_object(Bucket=bucket, Key=f"bench/catalog/images/{product_id}.jpg")["Body"].read()
            client.put_object(Bucket=bucket, Key=f"bench/naive-{label}/{product_id}.jpg", Body=body)

    naive_rate = len(sample) / timed(naive)
    print(f"\n[{label}] {n:,} images, {WORKERS} threads")
    print(f"  asset image_set            {asset_rate:8.1f} images/s  ({seconds:.1f}s for the whole materialisation)")
    print(f"  (b) bare copy_object loop  {bare_rate:8.1f} images/s   asset/(b) = {asset_rate / bare_rate:.2f}x")
    print(f"  (a) sequential get+put     {naive_rate:8.1f} images/s   asset/(a) = {asset_rate / naive_rate:.1f}x"
          f"  (first {len(sample):,} images)")
    return {"asset": asset_rate, "bare": bare_rate, "naive": naive_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(REPO.parent / "shared/datasets/fashion-product-images-small"))
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--naive-sample", type=int, default=1000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fashion-bench-"))
    moto = servers.start_moto()
    proxy = LatencyProxy(int(moto.endpoint_url.rsplit(":", 1)[1]), args.latency_ms / 1000)
    try:
        import os

        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"})
        moto.client().create_bucket(Bucket="bench")
        base = {
            "catalog_source": CatalogSource(dataset_dir=args.dataset),
            "catalog_db": CatalogDatabase(url=f"sqlite:///{work / 'catalog.sqlite'}"),
        }
        instance = dg.DagsterInstance.ephemeral()
        s3 = S3StoreResource(url="s3://bench/bench", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                             max_concurrency=WORKERS)
        print(f"Ingesting {args.dataset} into the moto server ...", flush=True)
        ingest = timed(lambda: dg.materialize([products, product_images], resources={**base, "store": s3},
                                              instance=instance, run_config=QUIET))
        engine = base["catalog_db"].engine
        with engine.connect() as conn:
            ids = [row[0] for row in conn.exec_driver_sql(QUERY)]
        print(f"  {len(ids):,} images ingested in {ingest:.1f}s")

        direct = s3_round("direct", moto.endpoint_url, "bench", base, ids, args.naive_sample, instance)
        slow = s3_round(f"latency-{args.latency_ms:g}ms", proxy.url, "bench", base, ids, args.naive_sample, instance)

        # Local store: the asset (hard links) against a sequential file-copy loop.
        local = LocalStoreResource(path=str(work / "store"))
        dg.materialize([product_images], resources={**base, "store": local}, instance=instance, run_config=QUIET)
        seconds, n = materialize_set({**base, "store": local}, "local-asset", instance)
        source = work / "store" / "catalog" / "images"
        target = work / "plain-copy"
        target.mkdir()
        copy_seconds = timed(lambda: [shutil.copyfile(source / f"{i}.jpg", target / f"{i}.jpg") for i in ids])
        print(f"\n[local store] {n:,} images")
        print(f"  asset image_set            {n / seconds:8.1f} images/s  ({seconds:.1f}s)")
        print(f"  sequential file copy       {len(ids) / copy_seconds:8.1f} images/s   "
              f"asset/copy = {(n / seconds) / (len(ids) / copy_seconds):.2f}x")

        print("\nSummary (targets with latency: asset/(b) >= 0.8, asset/(a) >= 10)")
        for label, r in (("direct", direct), ("latency", slow)):
            print(f"  {label:8} asset/(b) = {r['asset'] / r['bare']:.2f}x   asset/(a) = {r['asset'] / r['naive']:.1f}x")
    finally:
        proxy.close()
        servers.stop_moto(moto)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
