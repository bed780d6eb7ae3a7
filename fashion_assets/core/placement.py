"""Placement: how an asset's work becomes steps, and where steps run. The one module of
``core`` that imports Dagster.

**Steps.** The three sharded assets (``image_set``, ``augmented_set``, ``predictions``) are each
a graph of three ops: a planner that writes the work lists and yields one dynamic output per
shard, a shard op mapped over them (one step each, so one pod each under ``k8s_job_executor``),
and a committer that combines the shards' results. The graph takes the asset's config once and
hands it to each op (``same_config_for``), so run config keeps the shape
``ops: {<asset>: {config: {...}}}``.

**Executor.** Locally (``dagster dev``, ``dagster asset materialize``, ``make demo``) runs use
the in-process executor: one machine has one set of cores, which each step's own thread or
process pool already fills, so a Python process per step bought nothing but its start-up
(about 4 s a step on 2 cores; ``bench/overhead.py``). On Kubernetes, ``k8s_job_executor`` runs
each step in its own pod and honours the step's ``dagster-k8s/config`` tag; locally the tag is
inert.

**GPU steps.** The GPU node selector and toleration follow the usual NVIDIA device-plugin
conventions and can be changed without editing code: ``k8s_job_executor`` runs each step in its own pod and honours the step's
``dagster-k8s/config`` tag; locally the tag is inert. The GPU node selector and toleration
follow the usual NVIDIA device-plugin conventions and can be changed without editing code:

| variable                      | default                                  |
|-------------------------------|------------------------------------------|
| FASHION_GPU_NODE_SELECTOR     | (none)  e.g. ``nvidia.com/gpu.present=true`` |
| FASHION_GPU_TOLERATION_KEY    | ``nvidia.com/gpu``                       |
| FASHION_GPU_CPU / _MEMORY     | ``4`` / ``16Gi`` (requests for the step's container) |
| FASHION_GPU_COUNT             | ``1``; ``0`` runs the model steps on CPU nodes |
| FASHION_EXECUTOR              | ``in_process``; ``multiprocess``; ``k8s`` in the cluster |
| FASHION_K8S_MAX_CONCURRENT    | ``16``: step pods per run at once        |

These are read when the code location loads (the tags are part of the definitions), so the
Helm values set them on the user-code deployment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import dagster as dg

from .. import layout
from . import leases
from .progress import peak_rss_mb
from .reporting import markdown_table
from .shards import Shard, ShardPlan, ShardStats

GPU_POOL = "gpu"  # Dagster concurrency pool of the GPU steps: caps how many run at once


def gpu_k8s_config() -> dict:
    """The ``dagster-k8s/config`` for a step that needs one GPU."""
    cpu = os.environ.get("FASHION_GPU_CPU", "4")
    memory = os.environ.get("FASHION_GPU_MEMORY", "16Gi")
    pod_spec: dict = {
        "tolerations": [
            {"key": os.environ.get("FASHION_GPU_TOLERATION_KEY", "nvidia.com/gpu"), "operator": "Exists",
             "effect": "NoSchedule"}
        ]
    }
    selector = os.environ.get("FASHION_GPU_NODE_SELECTOR", "")
    if selector:
        key, eq, value = selector.partition("=")
        if not (key.strip() and eq):
            raise ValueError(f"FASHION_GPU_NODE_SELECTOR={selector}: expected label=value")
        pod_spec["node_selector"] = {key.strip(): value.strip()}
    return {
        "container_config": {
            "resources": {
                # Extended resources such as GPUs must have limit == request.
                "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"},
                "limits": {"memory": memory, "nvidia.com/gpu": "1"},
            }
        },
        "pod_spec_config": pod_spec,
    }


def gpu_op_tags() -> dict:
    """Tags for an asset whose step should run on a GPU node in the cluster.

    FASHION_GPU_COUNT=0 (a cluster without GPU nodes) keeps the steps on ordinary nodes, where
    TensorFlow uses the CPU; otherwise they would wait forever for a GPU that never comes."""
    if os.environ.get("FASHION_GPU_COUNT", "1") == "0":
        return {}
    return {"dagster-k8s/config": gpu_k8s_config()}


EXECUTORS = ("in_process", "multiprocess", "k8s")


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor FASHION_EXECUTOR names: ``in_process`` (the default), ``multiprocess`` (a
    process per step, for a many-core machine running several shards of one set), or ``k8s``
    (``k8s_job_executor``: a pod per step; the Helm values set it)."""
    choice = os.environ.get("FASHION_EXECUTOR", "in_process")
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(
            {"max_concurrent": int(os.environ.get("FASHION_K8S_MAX_CONCURRENT", "16"))}, name="k8s_job_executor"
        )
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "in_process":
        return dg.in_process_executor
    raise ValueError(f"FASHION_EXECUTOR={choice}: expected one of {', '.join(EXECUTORS)}")


# --- the sharded assets' steps -------------------------------------------------------------------


def same_config_for(config_class: type[dg.Config], *op_names: str) -> dg.ConfigMapping:
    """The graph's config schema is ``config_class``; every op gets the whole of it."""

    def config_fn(config: config_class) -> dict:  # the annotation gives the graph its schema
        return {name: {"config": dict(config)} for name in op_names}

    return dg.ConfigMapping(config_fn=config_fn)


@contextmanager
def partition_lease(context: dg.OpExecutionContext, catalog_db, asset: str,
                    release: bool = False, partition: str | None = None) -> Iterator[leases.Heartbeat]:
    """This run's lease on ``asset[partition]`` (``core.leases``) for the length of one step.

    Every step of a sharded asset takes it (``PartitionBusy`` names the run that holds it, and
    the step fails before writing), renews it while it works, and the commit step gives it back
    once everything is written. Every step, not only the planner: a re-execution from failure is
    a new run that starts at the failed shard, and it takes the partition over from the failed
    run, which the instance reports finished. A holding run that died unnoticed (``kill -9``)
    frees the partition after the TTL (``catalog_db.lease_ttl_s``). An unpartitioned asset names
    the ``partition`` it writes (e.g. one input size of ``classifier_inputs``)."""
    engine = catalog_db.engine

    def run_finished(run_id: str) -> bool:
        run = context.instance.get_run_by_id(run_id)
        return run is not None and run.is_finished

    try:
        lease = leases.acquire(engine, asset, partition or context.partition_key, context.run_id,
                               catalog_db.lease_ttl_s,
                               run_finished)
    except leases.PartitionBusy as exc:
        raise dg.Failure(str(exc), allow_retries=False) from None
    if lease.took_over_from:
        context.log.warning(f"{lease.name}: took the partition over from run {lease.took_over_from}, "
                            "which has ended or stopped renewing its lease")
    with leases.Heartbeat(engine, lease) as heartbeat:
        yield heartbeat
        heartbeat.check()
    if release:
        leases.release(engine, lease)


def plan_prefix(context: dg.OpExecutionContext, asset: str) -> str:
    """Where this run's work lists for ``asset`` and this partition go."""
    return layout.work(context.run_id, asset, context.partition_key)


def shard_outputs(shards: Iterable[Shard]) -> Iterator[dg.DynamicOutput]:
    for shard in shards:
        yield dg.DynamicOutput(shard, output_name="shards", mapping_key=shard.mapping_key)


def step_figures(plan: ShardPlan, commit_started: float, shards: list[ShardStats]) -> dict:
    """Where the time and memory went: the planning step, each shard step, the commit step.
    The plan and the commit run once per set whatever the number of pods, so they bound how far
    more shards help (see docs/scaling.md)."""
    return {
        "shards": len(shards),
        "shard_rates": shards_table((s.index, s.images, s.seconds, s.peak_rss_mb) for s in shards),
        "plan_seconds": dg.MetadataValue.float(round(plan.seconds, 2)),
        "plan_peak_rss_mb": dg.MetadataValue.float(round(plan.peak_rss_mb, 1)),
        "shard_seconds_max": dg.MetadataValue.float(round(max((s.seconds for s in shards), default=0.0), 2)),
        "shard_peak_rss_mb_max": dg.MetadataValue.float(round(max((s.peak_rss_mb for s in shards), default=0.0), 1)),
        "commit_seconds": dg.MetadataValue.float(round(time.monotonic() - commit_started, 2)),
        "commit_peak_rss_mb": dg.MetadataValue.float(round(peak_rss_mb(), 1)),
    }


def shards_table(rows: Iterable[tuple]) -> dg.MetadataValue:
    """Per-shard figures: a shard that lags or swells shows here."""
    return dg.MetadataValue.md(
        markdown_table(["shard", "images", "seconds", "images/s", "peak RSS (MB)"],
                       [[i, n, round(s, 1), round(n / s, 1) if s else 0, round(m)] for i, n, s, m in rows], limit=50)
    )
