"""Set versions: every distinct content an image set has had, kept immutable and cheap.

A version is one manifest (ids, MD5s, sizes and the product columns of the day) under
``image-sets/<name>/versions/<seq>-<digest>/`` (keys: ``fashion_assets.layout``). Its id is the
``digest``, a short hash of the ``(id, md5, bytes)`` rows, which is also ``image_set``'s
Dagster ``DataVersion``; ``seq`` (1, 2, 3...) is for people. Identical content makes no new
version, so a no-op run stays a no-op.

Photos are stored once per set, and versions share them: a manifest's ``key`` names the
object, and an object is never overwritten while a version names it (``layout.set_image`` for a
product's first photo, ``layout.set_image_version`` for a later, different one). A set written
before versions existed (one ``manifest.parquet`` and ``images/<id>.jpg``) reads as version 1
and is upgraded in place (``upgrade``): its manifest is copied, no photo is.

Garbage collection (``collect``) keeps the newest ``keep`` versions, every version a model in
the store names in its ``labels.json``, and every object that a run's work lists name (a run in
flight, or one that died before its leftovers were cleaned). It runs only under the set's
partition lease, like any writer (the wiring takes it), so nothing plans, copies or commits the
set meanwhile. Plain module: no Dagster.

Why this module is long: a version's whole life is here (digest, resolve, write, upgrade, diff,
the models that name it, collection and the lookup readers use); split, each part would need
the others' view of the layout and the same listing of ``versions/``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from .. import layout
from ..core import leases
from ..core.parquet import CONTENT_TYPE, from_bytes, read_parquet
from ..core.storage import ObjectStore, delete_keys, md5_hex

WRITER = "image_set"  # the asset whose runs' work lists GC respects (``layout.work_run``)
DEFAULT_KEEP = 5
CONTENT = ["id", "md5", "bytes"]  # what makes two versions the same


SCHEMA_KEY = b"set_version_digest"  # in the schema metadata of what is made from a version


def stamp(schema: pa.Schema, digest: str) -> pa.Schema:
    """``schema`` saying it was made from the set version ``digest`` (augmented manifests and
    predictions Parquet files carry it, so their checks compare with that version)."""
    return schema.with_metadata({**(schema.metadata or {}), SCHEMA_KEY: digest.encode()})


def made_from(schema: pa.Schema) -> str | None:
    """The set version digest ``stamp`` left in ``schema``; None for files from before set
    versions (made from the set as it was then)."""
    value = (schema.metadata or {}).get(SCHEMA_KEY)
    return value.decode() if value else None


class NoSuchVersion(ValueError):
    """A set or version that is not in the store; the message names it and what there is."""


@dataclass(frozen=True)
class SetVersion:
    name: str
    seq: int
    digest: str
    legacy: bool = False  # the pre-version layout's manifest.parquet, not yet upgraded

    @property
    def manifest_key(self) -> str:
        return layout.manifest(self.name) if self.legacy else layout.set_version_manifest(self.name, self.seq,
                                                                                         self.digest)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.seq}"

    def as_json(self) -> dict:
        return {"image_set": self.name, "set_version": self.seq, "set_version_digest": self.digest}


def content_digest(table: pa.Table) -> str:
    """12 hex characters of the MD5 of the ``(id, md5, bytes)`` rows in id order."""
    rows = table.select(CONTENT).sort_by("id").to_pylist()
    return md5_hex("\n".join(f"{r['id']},{r['md5']},{r['bytes']}" for r in rows).encode())[:12]


def parse_ref(text: str) -> tuple[str, str | None]:
    """``"name@ref"`` → ``("name", "ref")``; ``"name"`` → ``("name", None)`` (the newest)."""
    name, at, ref = text.partition("@")
    layout.check_name(name)
    if at and not ref:
        raise ValueError(f"{text!r}: name a version after '@' (its number or digest)")
    return name, ref or None


def list_versions(store: ObjectStore, name: str) -> list[SetVersion]:
    """The set's complete versions, oldest first (one listing of ``versions/``); a set still in
    the pre-version layout is its legacy version 1."""
    found = sorted(v for obj in store.list(layout.set_versions(name))
                   if (v := layout.set_version_of(name, obj.key)) is not None)
    if found:
        return [SetVersion(name, seq, digest) for seq, digest in found]
    if store.exists(layout.manifest(name)):
        table = read_parquet(store, layout.manifest(name), columns=CONTENT)
        return [SetVersion(name, 1, content_digest(table), legacy=True)]
    return []


def resolve(store: ObjectStore, name: str, ref: str | int | None = None) -> SetVersion:
    """The version ``ref`` names (its number, or its digest or a prefix of 4+ characters of it),
    or the newest when ``ref`` is None or "latest"; :class:`NoSuchVersion` says what there is."""
    versions = list_versions(store, name)
    if not versions:
        raise NoSuchVersion(f"image set {name!r} has never been materialised (no versions under "
                            f"{store.uri(layout.set_versions(name))}): materialise image_set[{name}] first")
    ref = None if ref is None else str(ref).strip().lower()
    if ref in (None, "latest"):
        return versions[-1]
    if ref.isdigit():
        matches = [v for v in versions if v.seq == int(ref)]
    else:
        matches = [v for v in versions if len(ref) >= 4 and v.digest.startswith(ref)]
    if len(matches) != 1:
        shown = ", ".join(f"{v.seq} ({v.digest})" for v in versions[-10:])
        raise NoSuchVersion(f"image set {name!r} has no version {ref!r}"
                            f"{' (ambiguous)' if matches else ''}; it has: {shown}")
    return matches[0]


def read_version(store: ObjectStore, version: SetVersion, columns: list[str] | None = None) -> pa.Table:
    return read_parquet(store, version.manifest_key, columns=columns)


def read_record(store: ObjectStore, version: SetVersion) -> dict:
    """What ``version.json`` says (when, SQL hash, catalog state, images, bytes); for a legacy
    version, what its manifest tells."""
    if version.legacy:
        table = read_version(store, version, columns=["bytes"])
        return {"created_at": None, "images": table.num_rows, "bytes": int(pc.sum(table["bytes"]).as_py() or 0),
                "sql_md5": None, "catalog": None}
    return json.loads(store.get_bytes(layout.set_version_record(version.name, version.seq, version.digest)))


def _record(table: pa.Table, manifest_bytes: bytes, extra: dict) -> dict:
    return {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "images": table.num_rows,
            "bytes": int(pc.sum(table["bytes"]).as_py() or 0), "manifest_md5": md5_hex(manifest_bytes), **extra}


def _write(store: ObjectStore, version: SetVersion, manifest_bytes: bytes, record: dict) -> None:
    """The version's manifest, then the newest-manifest copy, then ``version.json``, which makes
    the version exist: a crash before it leaves no version, and the next run makes it again."""
    store.put_bytes(layout.set_version_manifest(version.name, version.seq, version.digest), manifest_bytes,
                    CONTENT_TYPE)
    store.put_bytes(layout.manifest(version.name), manifest_bytes, CONTENT_TYPE)
    store.put_bytes(layout.set_version_record(version.name, version.seq, version.digest),
                    json.dumps({"version": version.seq, "digest": version.digest, **record}, indent=2).encode(),
                    "application/json")


def upgrade(store: ObjectStore, name: str) -> SetVersion | None:
    """Make a pre-version set (``manifest.parquet`` and ``images/<id>.jpg``) version 1 of itself:
    its manifest is copied under ``versions/``, its photos stay where they are (its keys name
    them). None when there is nothing to upgrade. Only under the set's lease."""
    versions = list_versions(store, name)
    if not versions or not versions[0].legacy:
        return None
    manifest_bytes = store.get_bytes(layout.manifest(name))
    table = from_bytes(manifest_bytes)
    version = SetVersion(name, 1, content_digest(table))
    _write(store, version, manifest_bytes, _record(table, manifest_bytes, {"upgraded_from": "manifest.parquet"}))
    return version


def commit_version(store: ObjectStore, name: str, manifest_bytes: bytes, extra: dict) -> tuple[SetVersion, bool]:
    """The version holding this manifest's content: the newest one when it is the same content
    (nothing written; ``False``), else a new one (``True``). Only under the set's lease."""
    table = from_bytes(manifest_bytes)
    digest = content_digest(table)
    versions = list_versions(store, name)
    if versions and versions[-1].digest == digest:
        if not store.exists(layout.manifest(name)):
            store.put_bytes(layout.manifest(name), store.get_bytes(versions[-1].manifest_key), CONTENT_TYPE)
        return versions[-1], False
    version = SetVersion(name, versions[-1].seq + 1 if versions else 1, digest)
    _write(store, version, manifest_bytes, _record(table, manifest_bytes, extra))
    return version, True


def stored_photos(store: ObjectStore, name: str) -> dict[str, tuple[int, str, int]]:
    """``{key: (id, md5, bytes)}`` of every photo a version of the set names."""
    named: dict[str, tuple[int, str, int]] = {}
    for version in list_versions(store, name):
        for row in read_version(store, version, columns=["id", "key", *CONTENT[1:]]).to_pylist():
            named[row["key"]] = (row["id"], row["md5"], row["bytes"])
    return named


def diff(old: pa.Table, new: pa.Table) -> dict[str, list[int]]:
    """Ids ``added``, ``removed`` and ``changed`` (another photo) from ``old`` to ``new``."""
    before = dict(zip(old["id"].to_pylist(), old["md5"].to_pylist()))
    after = dict(zip(new["id"].to_pylist(), new["md5"].to_pylist()))
    return {"added": sorted(after.keys() - before.keys()), "removed": sorted(before.keys() - after.keys()),
            "changed": sorted(i for i in after.keys() & before.keys() if after[i] != before[i])}


def models_trained_on(store: ObjectStore) -> dict[tuple[str, str], list[str]]:
    """``{(set name, version digest or manifest MD5): [model versions]}`` from every model's
    ``labels.json`` in the store. Models older than set versions named their set by the MD5 of
    its manifest, which ``version.json`` records too."""
    named: dict[tuple[str, str], list[str]] = {}
    for obj in store.list(layout.MODELS):
        model = layout.model_labels_version(obj.key)
        if model is None:
            continue
        try:
            trained_on = json.loads(store.get_bytes(obj.key)).get("trained_on") or {}
        except (ValueError, OSError):
            continue  # a model being written, or not ours: it names nothing
        if trained_on.get("source") != "image_set":
            continue
        for ref in (trained_on.get("set_version_digest"), trained_on.get("manifest_md5")):
            if ref:
                named.setdefault((trained_on["image_set"], ref), []).append(model)
    return named


def models_of(named: dict[tuple[str, str], list[str]], store: ObjectStore, version: SetVersion,
              record: dict | None = None) -> list[str]:
    """The models of ``models_trained_on`` that were trained on ``version``."""
    record = record if record is not None else read_record(store, version)
    refs = [version.digest, record.get("manifest_md5")]
    return sorted({m for ref in refs if ref for m in named.get((version.name, ref), [])})


def in_flight_keys(store: ObjectStore, name: str) -> set[str]:
    """Every key the work lists of ``image_set[name]`` runs name: what a run has planned to
    reference and may not have committed yet."""
    keys: set[str] = set()
    for obj in store.list(layout.WORK):
        if layout.work_run(obj.key, WRITER, name) is not None and re.search(r"/shard-\d+\.parquet$", obj.key):
            keys.update(read_parquet(store, obj.key, columns=["key"])["key"].to_pylist())
    return keys


@dataclass
class Collected:
    """What one garbage collection kept and deleted (or would, with ``dry_run``)."""

    name: str
    kept: list[int] = field(default_factory=list)  # version numbers
    dropped: list[int] = field(default_factory=list)
    kept_for_models: dict[int, list[str]] = field(default_factory=dict)
    objects: int = 0  # photos in the store before
    deleted: int = 0  # photos deleted
    deleted_bytes: int = 0
    in_flight: int = 0  # photos kept only because a run's work list names them
    seconds: float = 0.0


def collect(store: ObjectStore, name: str, keep: int = DEFAULT_KEEP, dry_run: bool = False,
            workers: int = 16) -> Collected:
    """Drop versions beyond the newest ``keep`` that no model names, then delete every photo
    no kept version and no run's work list names. Version records go first, so a crash midway
    leaves unreferenced photos (the next collection deletes them), never a version that lacks
    one. Only under the set's partition lease."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest version), not {keep}")
    started = time.monotonic()
    result = Collected(name)
    if not dry_run:
        upgrade(store, name)
    versions = list_versions(store, name)
    named_by_models = models_trained_on(store)
    kept = []
    for position, version in enumerate(versions):
        models = models_of(named_by_models, store, version)
        if models:
            result.kept_for_models[version.seq] = models
        (kept if position >= len(versions) - keep or models else result.dropped).append(version)
    result.kept = [v.seq for v in kept]
    result.dropped = [v.seq for v in result.dropped]
    referenced: set[str] = set()
    for version in kept:
        referenced.update(read_version(store, version, columns=["key"])["key"].to_pylist())
    flying = in_flight_keys(store, name) - referenced
    result.in_flight = len(flying)
    referenced |= flying
    garbage = []
    for obj in store.list(layout.set_images(name)):
        result.objects += 1
        if obj.key not in referenced:
            garbage.append(obj.key)
            result.deleted_bytes += obj.size
    result.deleted = len(garbage)
    if not dry_run:
        complete = {layout.set_version(name, v.seq, v.digest) for v in kept}
        records = [obj.key for obj in store.list(layout.set_versions(name))
                   if not any(obj.key.startswith(folder) for folder in complete)]
        # version.json first: it is what makes a version exist.
        delete_keys(store, sorted(records, key=lambda k: not k.endswith("version.json")), workers=1)
        delete_keys(store, garbage, workers)
    result.seconds = time.monotonic() - started
    return result


def collect_under_lease(engine, store: ObjectStore, name: str, keep: int = DEFAULT_KEEP, ttl_s: float = 600.0,
                        run_finished=lambda run_id: False, workers: int = 16) -> Collected:
    """``collect`` holding ``image_set[name]``'s partition lease (``core.leases``) as a writer
    would: ``PartitionBusy`` names the run that writes the set now, and nothing is deleted."""
    lease = leases.acquire(engine, WRITER, name, f"gc-{uuid.uuid4().hex[:12]}", ttl_s, run_finished)
    try:
        with leases.Heartbeat(engine, lease) as heartbeat:
            heartbeat.check()
            return collect(store, name, keep, workers=workers)
    finally:
        leases.release(engine, lease)


class PhotoKeys:
    """Where a product's photo is in one version of a set, for readers that name a product
    rather than a key (the gateway's ``{"key": ..., "version": ...}``). A version never changes,
    so each version's ``{id: key}`` is read once and kept (the newest ``cached`` versions)."""

    def __init__(self, store: ObjectStore, cached: int = 8):
        self.store, self.cached = store, cached
        self._maps: dict[tuple[str, str], dict[int, str]] = {}
        self._lock = threading.Lock()

    def key(self, name: str, ref: str | int | None, product_id: int) -> str:
        version = resolve(self.store, name, ref)
        with self._lock:
            keys = self._maps.get((name, version.digest))
        if keys is None:
            table = read_version(self.store, version, columns=["id", "key"])
            keys = dict(zip(table["id"].to_pylist(), table["key"].to_pylist()))
            with self._lock:
                self._maps[(name, version.digest)] = keys
                while len(self._maps) > self.cached:
                    self._maps.pop(next(iter(self._maps)))
        if product_id not in keys:
            raise NoSuchVersion(f"product {product_id} is not in image set {name!r} version {version.seq}")
        return keys[product_id]
