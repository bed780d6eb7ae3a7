"""``fashion-assets serve`` and ``fashion-assets fetch-served-model``: the commands registered by
``fashion_assets.cli``.

    fashion-assets serve [--host 127.0.0.1] [--port 8080] [--backend embedded|tfserving]
                         [--tfserving ADDRESS] [--allow-private-urls] [--max-bytes N]
                         [--workers N] ...
    fashion-assets fetch-served-model DEST    the published model in TF Serving's layout under DEST
                                              (the TF Serving pod's init container runs it)

The store and the catalog database come from the same environment variables as the code location
(FASHION_STORE_URL, FASHION_S3_ENDPOINT_URL, AWS_*; FASHION_CATALOG_URL, and FASHION_QUERY_URL's
read-only role when set, which ``serve`` reads ``product_images`` with for near-duplicates);
FASHION_SERVE_* variables set the defaults of the options, so a container needs no arguments
beyond ``serve``. They are read, and every option checked, when ``serve`` starts (never when the
parser is built, so a bad variable cannot break other commands): a bad value fails ``serve`` at
once, with one line naming the option or the variable and the value.

``--workers N`` runs N gateway processes on one listening socket (uvicorn's supervisor, which
restarts one that dies): each loads the model and the near-duplicate index itself, gets an
equal share of the cores for its TensorFlow and checker threads, and takes connections only
once its model answers, so no request meets a process still loading (with none ready yet,
nothing listens on the port: /healthz is refused, the pod is not ready). One
process is bound by Python's GIL (the HTTP handling, the checks' Python around Pillow) long
before the model is; docs/speed.md has the figures.
"""

import argparse
import atexit
import contextlib
import ipaddress
import json
import logging
import math
import os
from collections.abc import Callable, Mapping

import dagster as dg

from ..core.parallel import usable_cores
from ..resources import ConfigurationError, resources_from_env, store_from_env
from .gateway import MAX_ITEMS, GatewayConfig, create_app
from .inputs import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S, FetchPolicy
from .near_duplicates import CatalogIndex
from .publish import fetch_published


# Readers of the options' text: each returns the value or raises ValueError saying what was expected.
def _whole(raw: str) -> int | None:
    """``raw`` as a whole number (ASCII digits, ``_`` allowed between them), None if it is not one."""
    digits = raw.replace("_", "")
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 30 else None


def _port(raw: str) -> int:
    port = _whole(raw)
    if port is None or not 1 <= port <= 65535:
        raise ValueError("expected a port number from 1 to 65535")
    return port


def _positive_int(what: str) -> Callable[[str], int]:
    def read(raw: str) -> int:
        value = _whole(raw)
        if value is None or value < 1:
            raise ValueError(f"expected a positive whole number of {what}")
        return value
    return read


def _number(what: str, zero: bool = False) -> Callable[[str], float]:
    """A reader of a finite number above zero (``zero``: or zero)."""
    def read(raw: str) -> float:
        try:
            value = float(raw) if len(raw) <= 30 else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            raise ValueError(f"expected {what}")
        return value
    return read


def _backend(raw: str) -> str:
    if raw not in ("embedded", "tfserving"):
        raise ValueError("expected embedded or tfserving")
    return raw


def _switch(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError("expected 1 (on) or 0 (off)")
    return raw == "1"


def _networks(raw: str) -> tuple[str, ...]:
    networks = tuple(n.strip() for n in raw.split(",") if n.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not a network (a CIDR such as 10.1.0.0/16, or an address)") from None
    return networks


# option (its attribute): (the variable that sets its default, or None; the default; its reader)
OPTIONS: dict[str, tuple[str | None, str, Callable[[str], object]]] = {
    "host": ("FASHION_SERVE_HOST", "127.0.0.1", str),
    "port": ("FASHION_SERVE_PORT", "8080", _port),
    "backend": ("FASHION_SERVE_BACKEND", "embedded", _backend),
    "tfserving": ("FASHION_TFSERVING_ADDRESS", "127.0.0.1:8500", str),
    "allow_private_urls": ("FASHION_SERVE_ALLOW_PRIVATE_URLS", "0", _switch),
    "allow_networks": ("FASHION_SERVE_ALLOW_NETWORKS", "", _networks),
    "max_bytes": ("FASHION_SERVE_MAX_BYTES", str(DEFAULT_MAX_BYTES), _positive_int("bytes")),
    "download_timeout": ("FASHION_SERVE_DOWNLOAD_TIMEOUT_S", str(DEFAULT_TIMEOUT_S),
                         _number("a positive number of seconds")),
    "max_batch": (None, "64", _positive_int("images")),
    "batch_delay_ms": (None, "4", _number("a number of milliseconds, 0 or more", zero=True)),
    "near_duplicates_refresh_s": ("FASHION_SERVE_NEAR_DUPLICATES_REFRESH_S", "30",
                                  _number("a positive number of seconds")),
    "workers": ("FASHION_SERVE_WORKERS", "1", _positive_int("processes")),
}
# How ``serve --workers N`` hands its checked settings to the processes uvicorn starts.
WORKER_SETTINGS = "FASHION_SERVE_WORKER_SETTINGS"


def _shown(value: str) -> str:
    return value if len(value) <= 80 else value[:77] + "..."


def serve_settings(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """Every ``serve`` option's value: the option when given, else its variable when set and not
    empty, else the default; ValueError naming the option (or the variable) and the bad value."""
    values = {}
    for name, (variable, default, read) in OPTIONS.items():
        given = getattr(args, name)
        if given is True:  # a switch given on the command line
            values[name] = True
            continue
        option = "--" + name.replace("_", "-")
        if given is not None:
            raw, shown = str(given), f"{option} {_shown(str(given))}"
        elif variable and environ.get(variable):
            raw, shown = environ[variable], f"{variable}={_shown(environ[variable])!r}"
        else:
            raw, shown = default, f"{option} {default}"
        try:
            values[name] = read(raw.strip())
        except ValueError as exc:
            raise ValueError(f"{shown}: {exc}") from None
    return values


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


def _gateway(store, catalog_db, settings: Mapping[str, object], threads: int = 0, worker: bool = False):
    """The gateway's app for ``settings``; ``threads``: its checker threads (0: one per core);
    ``worker``: one of several processes on the port, which takes connections once it is ready."""
    config = GatewayConfig(
        backend=settings["backend"], tfserving=settings["tfserving"],
        policy=FetchPolicy(max_bytes=settings["max_bytes"], timeout_s=settings["download_timeout"],
                           allow_private=settings["allow_private_urls"],
                           allowed_networks=tuple(settings["allow_networks"])),
        max_batch=settings["max_batch"], max_delay_s=settings["batch_delay_ms"] / 1000.0,
        near_duplicates_refresh_s=settings["near_duplicates_refresh_s"], check_workers=threads,
        serve_when_ready=worker,
    )
    return create_app(store, config, catalog=CatalogIndex(catalog_db.query_engine))


def worker_app():
    """One of ``serve --workers N``'s processes (uvicorn calls this in each): its share of the
    cores, set before TensorFlow starts, then its own resources and gateway, kept for its life."""
    settings = json.loads(os.environ[WORKER_SETTINGS])
    threads = max(1, usable_cores() // settings["workers"])
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(variable, str(threads))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    stack = contextlib.ExitStack()
    atexit.register(stack.close)
    store, catalog_db = stack.enter_context(_resources(with_catalog=True))
    return _gateway(store, catalog_db, settings, threads, worker=True)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = serve_settings(args)  # before anything starts: a bad option or variable fails here, once
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # access_log off: the gateway logs each request itself (without query strings).
    run = {"host": settings["host"], "port": settings["port"], "access_log": False, "log_level": "info",
           "timeout_graceful_shutdown": 10}
    with _resources(with_catalog=True) as (store, catalog_db):  # a wrong store or database fails here, once
        if settings["workers"] == 1:
            uvicorn.run(_gateway(store, catalog_db, settings), **run)
            return 0
    os.environ[WORKER_SETTINGS] = json.dumps(settings)
    # A worker answers its supervisor's health pings from its event loop: give it longer than the
    # default 5 s while it imports TensorFlow beside its siblings on few cores.
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=settings["workers"], timeout_worker_healthcheck=30,
                **run)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    with _resources() as (store, _):
        number, model_dir = fetch_published(store, args.dest)
    print(f"version {number} in {model_dir}; --model_config_file={os.path.join(args.dest, 'models.config')}")
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add this stage's sub-commands to the ``fashion-assets`` parser."""
    serve = commands.add_parser("serve", help="the online prediction gateway (HTTP)")
    # No type= and no default here: serve_settings reads, checks and defaults every option when
    # serve starts, so that a bad FASHION_SERVE_* variable cannot break the other commands.
    serve.add_argument("--host", help="address to listen on (FASHION_SERVE_HOST; default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on, 1-65535 (FASHION_SERVE_PORT; default 8080)")
    serve.add_argument("--backend", help="embedded: the published model in this process (default); "
                                         "tfserving: TF Serving over gRPC (FASHION_SERVE_BACKEND)")
    serve.add_argument("--tfserving", help="TF Serving's gRPC address, host:port "
                                           "(FASHION_TFSERVING_ADDRESS; default 127.0.0.1:8500)")
    serve.add_argument("--allow-private-urls", action="store_true", default=None,
                       help="let {\"url\"} fetch from loopback, link-local and private addresses "
                            "(FASHION_SERVE_ALLOW_PRIVATE_URLS=1; off by default)")
    serve.add_argument("--allow-networks", help="comma-separated CIDRs {\"url\"} may fetch from although private, "
                                                "e.g. 10.1.0.0/16 (FASHION_SERVE_ALLOW_NETWORKS)")
    serve.add_argument("--max-bytes", help="largest upload or download, bytes (FASHION_SERVE_MAX_BYTES; default 10 MB)")
    serve.add_argument("--download-timeout",
                       help="seconds a URL's download may take (FASHION_SERVE_DOWNLOAD_TIMEOUT_S; default 10)")
    serve.add_argument("--max-batch", help="embedded: most images in one predict call (default 64)")
    serve.add_argument("--batch-delay-ms",
                       help="embedded: how long a batch waits for requests still being decoded (default 4)")
    serve.add_argument("--workers", help="gateway processes sharing the port and the cores, each with its own "
                                         "model (FASHION_SERVE_WORKERS; default 1)")
    serve.add_argument("--near-duplicates-refresh-s",
                       help="seconds between checks for a newer product_images (near-duplicate index; "
                            "FASHION_SERVE_NEAR_DUPLICATES_REFRESH_S; default 30)")
    serve.set_defaults(func=cmd_serve, max_items=MAX_ITEMS)
    fetch = commands.add_parser("fetch-served-model",
                                help="download the published model in TF Serving's layout (init containers)")
    fetch.add_argument("dest", help="folder: DEST/models.config and DEST/fashion_classifier/<n>/")
    fetch.set_defaults(func=cmd_fetch)
