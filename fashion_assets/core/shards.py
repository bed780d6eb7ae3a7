"""Work split into shards, so that one large set becomes many steps (pods on Kubernetes).

A set's work is planned once (which images to copy, augment or predict), cut into shards of
``shard_size`` items, and each shard's work list is written as Parquet to the store under the
run's work prefix (``layout.work``). Each shard is then one step (``k8s_job_executor`` gives
every step its own pod), and a last step combines what the shards wrote and removes the work
folder. Re-executing a failed run from failure re-runs only the shards that failed: their work
lists are still in the store. Plain module: no Dagster.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow as pa

from .. import layout
from .parquet import read_parquet, write_parquet
from .storage import ObjectStore, delete_keys


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
        return layout.work_stale(self.work_prefix)


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
        index = len(self.shards)
        shard = Shard(index, layout.work_shard(self.prefix, index), len(self._rows))
        write_parquet(self.store, shard.key, pa.Table.from_pylist(self._rows, schema=self.schema))
        self.shards.append(shard)
        self._rows = []


def write_keys(store: ObjectStore, key: str, keys: Iterable[str]) -> int:
    """A list of object keys as a work file (what a plan found stale); returns how many."""
    table = pa.table({"key": pa.array(sorted(keys), pa.string())})
    write_parquet(store, key, table)
    return table.num_rows


def delete_listed(store: ObjectStore, key: str, workers: int = 16) -> int:
    """Delete every object a ``write_keys`` file lists."""
    return delete_keys(store, read_parquet(store, key).column("key").to_pylist(), workers)


def remove_leftovers(store: ObjectStore, asset: str, partition: str, run_id: str, folders: Iterable[str],
                     workers: int = 16) -> int:
    """What earlier runs of ``asset[partition]`` that died left behind: their work lists, and the
    temporary files of writes in flight in ``folders`` (or of single objects: see
    ``ObjectStore.remove_temporary``). Only while holding the partition's
    lease (``core.leases``): then no other run is writing there."""
    stale = [obj.key for obj in store.list(layout.WORK)
             if layout.work_run(obj.key, asset, partition) not in (None, run_id)]
    return delete_keys(store, stale, workers) + sum(store.remove_temporary(folder) for folder in folders)
