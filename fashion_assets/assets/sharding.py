"""What the three sharded assets (image_set, augmented_set, predictions) share.

Each is a graph of three ops: a planner that writes the work lists and yields one dynamic
output per shard, a shard op mapped over them (one step each, so one pod each under
``k8s_job_executor``), and a committer that combines the shards' results. The graph takes the
asset's config once and hands it to each op (``same_config_for``), so run config keeps the
shape ``ops: {<asset>: {config: {...}}}``.
"""

import time
from collections.abc import Iterable, Iterator

import dagster as dg

from ..reporting import markdown_table
from ..shards import Shard, ShardPlan, ShardStats, peak_rss_mb, work_prefix


def same_config_for(config_class: type[dg.Config], *op_names: str) -> dg.ConfigMapping:
    """The graph's config schema is ``config_class``; every op gets the whole of it."""

    def config_fn(config: config_class) -> dict:  # the annotation gives the graph its schema
        return {name: {"config": dict(config)} for name in op_names}

    return dg.ConfigMapping(config_fn=config_fn)


def plan_prefix(context: dg.OpExecutionContext, asset: str) -> str:
    return work_prefix(context.run_id, asset, context.partition_key)


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
