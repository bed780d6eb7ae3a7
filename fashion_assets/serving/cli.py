"""``fashion-assets serve`` and ``fashion-assets fetch-served-model``: the commands registered by
``fashion_assets.cli``.

    fashion-assets serve [--host 127.0.0.1] [--port 8080] [--backend embedded|tfserving]
                         [--tfserving ADDRESS] [--allow-private-urls] [--max-bytes N] ...
    fashion-assets fetch-served-model DEST    the published model in TF Serving's layout under DEST
                                              (the TF Serving pod's init container runs it)

The store and the catalog database come from the same environment variables as the code location
(FASHION_STORE_URL, FASHION_S3_ENDPOINT_URL, AWS_*; FASHION_CATALOG_URL, and FASHION_QUERY_URL's
read-only role when set, which ``serve`` reads ``product_images`` with for near-duplicates);
FASHION_SERVE_* variables set the defaults of the options, so a container needs no arguments
beyond ``serve``.
"""

import argparse
import contextlib
import logging
import os

import dagster as dg

from ..resources import ConfigurationError, resources_from_env, store_from_env
from .gateway import MAX_ITEMS, GatewayConfig, create_app
from .inputs import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, FetchPolicy
from .near_duplicates import CatalogIndex
from .publish import fetch_published


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


@contextlib.contextmanager
def _resources(with_catalog: bool = False):
    """The store (checked), and with ``with_catalog`` the catalog database resource (connected:
    a wrong FASHION_CATALOG_URL fails here, masked, like a step's)."""
    from ..cli import CliError  # the parent module imports this one: imported when used

    wanted = {"store": store_from_env()}
    if with_catalog:
        wanted["catalog_db"] = resources_from_env()["catalog_db"]
    try:
        with dg.build_resources(wanted) as resources:
            store = resources.store.get_store()
            store.check()
            yield store, (resources.catalog_db if with_catalog else None)
    except ConfigurationError as exc:
        raise CliError(str(exc)) from None
    except dg.DagsterError as exc:
        raise CliError(str(exc.__cause__ or exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = GatewayConfig(
        backend=args.backend, tfserving=args.tfserving,
        policy=FetchPolicy(max_bytes=args.max_bytes, timeout_s=args.download_timeout,
                           allow_private=args.allow_private_urls,
                           allowed_networks=tuple(n.strip() for n in args.allow_networks.split(",") if n.strip())),
        max_batch=args.max_batch, max_delay_s=args.batch_delay_ms / 1000.0,
        near_duplicates_refresh_s=args.near_duplicates_refresh_s,
    )
    with _resources(with_catalog=True) as (store, catalog_db):
        app = create_app(store, config, catalog=CatalogIndex(catalog_db.query_engine))
        # access_log off: the gateway logs each request itself (without query strings).
        uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info",
                    timeout_graceful_shutdown=10)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    with _resources() as (store, _):
        number, model_dir = fetch_published(store, args.dest)
    print(f"version {number} in {model_dir}; --model_config_file={os.path.join(args.dest, 'models.config')}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the ``fashion-assets`` parser."""
    serve = commands.add_parser("serve", help="the online prediction gateway (HTTP)")
    serve.add_argument("--host", default=_env("FASHION_SERVE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(_env("FASHION_SERVE_PORT", "8080")))
    serve.add_argument("--backend", choices=["embedded", "tfserving"],
                       default=_env("FASHION_SERVE_BACKEND", "embedded"),
                       help="embedded: the published model in this process (default); tfserving: TF Serving over gRPC")
    serve.add_argument("--tfserving", default=_env("FASHION_TFSERVING_ADDRESS", "127.0.0.1:8500"),
                       help="TF Serving's gRPC address, host:port (default 127.0.0.1:8500)")
    serve.add_argument("--allow-private-urls", action="store_true",
                       default=_env("FASHION_SERVE_ALLOW_PRIVATE_URLS", "") == "1",
                       help="let {\"url\"} fetch from loopback, link-local and private addresses (off by default)")
    serve.add_argument("--allow-networks", default=_env("FASHION_SERVE_ALLOW_NETWORKS", ""),
                       help="comma-separated CIDRs {\"url\"} may fetch from although private (e.g. 10.1.0.0/16)")
    serve.add_argument("--max-bytes", type=int, default=int(_env("FASHION_SERVE_MAX_BYTES", str(DEFAULT_MAX_BYTES))),
                       help="largest upload or download, bytes (default 10 MB)")
    serve.add_argument("--download-timeout", type=float,
                       default=float(_env("FASHION_SERVE_DOWNLOAD_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))),
                       help="seconds a URL's download may take (default 10)")
    serve.add_argument("--max-batch", type=int, default=64, help="embedded: most images in one predict call")
    serve.add_argument("--batch-delay-ms", type=float, default=4.0,
                       help="embedded: how long a batch waits for requests still being decoded (default 4)")
    serve.add_argument("--near-duplicates-refresh-s", type=float,
                       default=float(_env("FASHION_SERVE_NEAR_DUPLICATES_REFRESH_S", "30")),
                       help="seconds between checks for a newer product_images (near-duplicate index; default 30)")
    serve.set_defaults(func=cmd_serve, max_items=MAX_ITEMS)
    fetch = commands.add_parser("fetch-served-model",
                                help="download the published model in TF Serving's layout (init containers)")
    fetch.add_argument("dest", help="folder: DEST/models.config and DEST/fashion_classifier/<n>/")
    fetch.set_defaults(func=cmd_fetch)
