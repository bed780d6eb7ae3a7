"""Work split into shards, so that one large set becomes many steps (pods on Kubernetes).

A set's work is planned once (which images to copy, augment or predict), cut into shards of
``shard_size`` items, and each shard's work list is written as Parquet to the store under
``_work/<run_id>/<asset>/``. Each shard is then one step (``k8s_job_executor`` gives every step
its own pod), and a last step combines what the shards wrote and removes the work folder.
Re-executing a failed run from failure re-runs only the shards that failed: their work lists
are still in the store. Plain module: no Dagster.
"""

from __future__ import annotations

import io
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from .parallel import bounded_map
from .storage import ObjectStore

WORK_ROOT = "_work/"  # scratch space; a bucket lifecycle rule may expire what failed runs leave
PARQUET = "application/vnd.apache.parquet"


def work_prefix(run_id: str, asset: str, partition: str) -> str:
    return f"{WORK_ROOT}{run_id}/{asset}/{partition}/"


@dataclass(frozen=True)
class Shard:
    """One shard's work list in the store."""

    index: int
    key: str
    items: int

    @property
    def mapping_key(self) -> str:
        """A name Dagster accepts in a step key: ``predictions.predict_shard[shard_00003]``."""
        return f"shard_{self.index:05d}"


@dataclass(kw_only=True)
class ShardPlan:
    """What every planning step hands on: the work lists, and its own figures. Each sharded
    asset's plan extends it with what its shards and commit need."""

    name: str  # the partition: the query's name
    work_prefix: str
    shards: list[Shard] = field(default_factory=list)
    seconds: float = 0.0  # planning
    peak_rss_mb: float = 0.0  # of the planning step's process

    @property
    def stale_key(self) -> str:
        """Objects the commit removes once the new manifest is in (see ``write_keys``)."""
        return self.work_prefix + "stale.parquet"


@dataclass
class ShardStats:
    """What one shard step did: the figures every sharded asset reports per shard."""

    index: int
    images: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


S = TypeVar("S", bound=ShardStats)


def in_plan_order(planned: list[Shard], results: list[S], what: str) -> list[S]:
    """The shards' results in plan order; the commit goes ahead only when every shard reported."""
    done = sorted(results, key=lambda r: r.index)
    if [r.index for r in done] != [s.index for s in planned]:
        raise RuntimeError(f"{what}: {len(done)} of {len(planned)} shards reported; re-execute the failed shards")
    return done


def write_parquet(store: ObjectStore, key: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    store.put_bytes(key, buffer.getvalue(), PARQUET)


def read_parquet(store: ObjectStore, key: str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get_bytes(key)), columns=columns)


class ShardWriter:
    """Cuts a stream of rows into work lists of ``size`` rows each, written as they fill up, so
    the planner never holds more than one shard's rows."""

    def __init__(self, store: ObjectStore, prefix: str, schema: pa.Schema, size: int):
        if size < 1:
            raise ValueError(f"shard_size must be at least 1, got {size}")
        self.store, self.prefix, self.schema, self.size = store, prefix, schema, size
        self.shards: list[Shard] = []
        self._rows: list[dict] = []

    def add(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self._rows.append(row)
            if len(self._rows) == self.size:
                self._flush()

    def close(self) -> list[Shard]:
        if self._rows:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        shard = Shard(len(self.shards), f"{self.prefix}shard-{len(self.shards):05d}.parquet", len(self._rows))
        write_parquet(self.store, shard.key, pa.Table.from_pylist(self._rows, schema=self.schema))
        self.shards.append(shard)
        self._rows = []


def concat_parquet(store: ObjectStore, keys: Iterable[str], schema: pa.Schema) -> bytes:
    """One Parquet file of ``schema``'s columns from the shards' files, in the order given;
    reads one at a time."""
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
        for key in keys:
            writer.write_table(read_parquet(store, key).select(schema.names).cast(schema))
    return buffer.getvalue()


def write_keys(store: ObjectStore, key: str, keys: Iterable[str]) -> int:
    """A list of object keys as a work file (what a plan found stale); returns how many."""
    table = pa.table({"key": pa.array(sorted(keys), pa.string())})
    write_parquet(store, key, table)
    return table.num_rows


def delete_keys(store: ObjectStore, keys: Iterable[str], workers: int = 16) -> int:
    """Delete ``keys`` on ``workers`` threads; returns how many."""
    return sum(1 for _ in bounded_map(store.delete, keys, workers))


def delete_listed(store: ObjectStore, key: str, workers: int = 16) -> int:
    """Delete every object a ``write_keys`` file lists."""
    return delete_keys(store, read_parquet(store, key).column("key").to_pylist(), workers)


def remove_prefix(store: ObjectStore, prefix: str, workers: int = 16) -> int:
    """Delete every object under ``prefix``; returns how many."""
    return delete_keys(store, [obj.key for obj in store.list(prefix)], workers)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (each step is its own process under the
    multiprocess and Kubernetes executors, so this is the step's peak)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024

