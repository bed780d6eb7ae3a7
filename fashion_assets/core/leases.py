"""Partition leases: one writer per asset partition, whatever starts the run.

The sensor, declarative automation, the UI and a shell can each start a run of the same query
partition. Two writers of one image set mix their files: one run's commit deletes what the
other's plan counted as present. So a run takes a lease on (asset, partition) when it plans and
gives it back when it commits; a second run that finds the lease held **fails at once**, naming
the run that holds it, and writes nothing. (Runs that go through the run queue never get that
far: the queue starts one run per partition at a time, ``dagster.yaml``'s tag limit on
``dagster/partition``; the lease covers what bypasses the queue, such as
``dagster asset materialize`` from a shell, and other Dagster instances.)

The lease lives in the catalog database (table ``partition_leases``), so it holds across
processes, pods and machines, on SQLite and PostgreSQL alike. It expires: every step of the
holding run renews it while it works (a heartbeat thread, every quarter of the TTL), so a holder
killed with ``kill -9`` frees the partition after at most one TTL, and a holder whose run the
Dagster instance reports finished (failed, cancelled) frees it at once. A run that lost its
lease (it stalled past the TTL and another run took over) fails at its next renewal, before it
writes a manifest or deletes anything. Plain module: no Dagster.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from .database import metadata

DEFAULT_TTL_S = 120.0

partition_leases = sa.Table(
    "partition_leases",
    metadata,
    sa.Column("asset", sa.Text, primary_key=True),
    sa.Column("partition_key", sa.Text, primary_key=True),
    sa.Column("run_id", sa.Text, nullable=False),
    sa.Column("holder", sa.Text, nullable=False),  # host:pid of the step that renewed it last
    sa.Column("acquired_at", sa.Float, nullable=False),  # seconds since the epoch
    sa.Column("renewed_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)


class PartitionBusy(RuntimeError):
    """Another run is writing this partition; the message names it."""


class LeaseLost(RuntimeError):
    """This run's lease expired and another run took the partition over."""


@dataclass(frozen=True)
class Lease:
    asset: str
    partition: str
    run_id: str
    ttl_s: float = DEFAULT_TTL_S
    took_over_from: str | None = None  # the previous holder, when its lease had expired or its run ended

    @property
    def name(self) -> str:
        return f"{self.asset}[{self.partition}]"

    def _where(self) -> sa.ColumnElement:
        return (partition_leases.c.asset == self.asset) & (partition_leases.c.partition_key == self.partition)


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire(
    engine: sa.Engine,
    asset: str,
    partition: str,
    run_id: str,
    ttl_s: float = DEFAULT_TTL_S,
    run_finished: Callable[[str], bool] = lambda run_id: False,
) -> Lease:
    """The lease on ``asset[partition]`` for ``run_id``, or :class:`PartitionBusy`.

    Taken when nobody holds it, when this run holds it already (a re-entry), when the holder's
    lease expired, or when ``run_finished(holder)`` says the holding run has ended. Every change
    is a compare-and-set on the row as read, so two runs racing for it cannot both win.
    """
    lease = Lease(asset, partition, run_id, ttl_s)
    for _ in range(5):
        now = time.time()
        with engine.connect() as conn:
            row = conn.execute(sa.select(partition_leases).where(lease._where())).first()
        values = {"run_id": run_id, "holder": this_process(), "acquired_at": now, "renewed_at": now,
                  "expires_at": now + ttl_s}
        if row is None:
            try:
                with engine.begin() as conn:
                    conn.execute(partition_leases.insert().values(asset=asset, partition_key=partition, **values))
                return lease
            except sa.exc.IntegrityError:
                continue  # another run inserted first: look again
        mine = row.run_id == run_id
        if not (mine or row.expires_at < now or run_finished(row.run_id)):
            raise PartitionBusy(
                f"{lease.name} is being written by run {row.run_id} (on {row.holder}; lease renewed "
                f"{now - row.renewed_at:.0f}s ago, expires in {row.expires_at - now:.0f}s). "
                "This run stops before writing anything, so the two cannot mix their files. Run it again when "
                f"run {row.run_id} has ended, or launch it from the UI, whose run queue waits its turn."
            )
        if mine:
            values.pop("acquired_at")
        with engine.begin() as conn:
            swapped = conn.execute(
                partition_leases.update()
                .where(lease._where() & (partition_leases.c.run_id == row.run_id)
                       & (partition_leases.c.expires_at == row.expires_at))
                .values(**values)
            ).rowcount
        if swapped == 1:
            return lease if mine else Lease(asset, partition, run_id, ttl_s, took_over_from=row.run_id)
    raise PartitionBusy(f"{lease.name}: other runs keep taking the lease; try again")


def renew(engine: sa.Engine, lease: Lease) -> None:
    """Extend this run's lease by its TTL, or :class:`LeaseLost` if it is not this run's any more."""
    now = time.time()
    with engine.begin() as conn:
        renewed = conn.execute(
            partition_leases.update()
            .where(lease._where() & (partition_leases.c.run_id == lease.run_id))
            .values(holder=this_process(), renewed_at=now, expires_at=now + lease.ttl_s)
        ).rowcount
    if renewed != 1:
        raise LeaseLost(
            f"{lease.name}: run {lease.run_id} no longer holds the partition's lease (it went {lease.ttl_s:.0f}s "
            "without renewal and another run took it over); this run stops before writing more"
        )


def release(engine: sa.Engine, lease: Lease) -> None:
    """Give the lease back (only if it is still this run's)."""
    with engine.begin() as conn:
        conn.execute(partition_leases.delete().where(lease._where() & (partition_leases.c.run_id == lease.run_id)))


def holder(engine: sa.Engine, asset: str, partition: str) -> str | None:
    """The run that holds ``asset[partition]`` now, expired or not; None when free."""
    where = (partition_leases.c.asset == asset) & (partition_leases.c.partition_key == partition)
    with engine.connect() as conn:
        return conn.execute(sa.select(partition_leases.c.run_id).where(where)).scalar()


class Heartbeat:
    """Renews a lease every quarter of its TTL while a step works; ``check()`` renews now and
    raises :class:`LeaseLost` if the lease went to another run (call it before irreversible
    writes: a manifest, deletions)."""

    def __init__(self, engine: sa.Engine, lease: Lease):
        self.engine, self.lease = engine, lease
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {lease.name}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease.ttl_s / 4):
            try:
                renew(self.engine, self.lease)
            except LeaseLost as exc:
                self.error = exc
                return
            except Exception:  # a database hiccup: the next beat tries again, well within the TTL
                continue

    def check(self) -> None:
        if self.error is not None:
            raise self.error
        renew(self.engine, self.lease)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
