"""Benchmark: every stage against its bare loop in one run, printed as issue 21's table (by hand,
not in CI).

    .venv/bin/python bench/table.py [--repeats 3] [--requests 2000] [--workers 1] [--only serve,predict]

Runs ``overhead.py``, ``augment.py``, ``predict.py`` and ``serve.py`` one after the other, each in a
process of its own (as run alone: their pools, TensorFlow's threads and the gateway do not share
a process), shows each one's own output as it goes, then prints one Markdown table: each ratio
against the baseline measured in the same bench, the goal, whether it is met, and the load
average at the end of that bench. Paste it into docs/speed.md. Nothing is asserted: on shared
cores the same loop's rate moves from one minute to the next, so read a ratio, never a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("overhead", "augment", "predict", "serve")


def run_bench(name: str, extra: list[str], out: Path) -> dict:
    """``bench/<name>.py extra --json out``, its output shown as it runs; its figures."""
    command = [sys.executable, str(HERE / f"{name}.py"), *extra, "--json", str(out)]
    print(f"\n$ {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    if subprocess.run(command, check=False).returncode:
        sys.exit(f"bench/{name}.py failed (its output is above)")
    figures = json.loads(out.read_text())
    figures["seconds"] = time.monotonic() - started
    return figures


def rows(figures: dict) -> list[tuple[str, str, str, str, bool, list[float]]]:
    """(stage, compared with, goal, measured, met, load) for each figure that ran."""
    table = []
    if augment := figures.get("augment"):
        ratio = augment["loop_vs_bare"]
        table.append(("`augmented_set`", "decode → augment → encode, same images and workers", "≥ 0.9×",
                      f"{ratio:.2f}×", ratio >= 0.9, augment["load"]))
    if predict := figures.get("predict"):
        for key, baseline, goal in (("asset_vs_bare", "bare `model.predict`, images decoded in memory", 0.8),
                                    ("asset_vs_decode_predict", "bare decode + predict", 0.95)):
            ratio = predict[key]
            table.append(("`predictions`", baseline, f"≥ {goal:g}×", f"{ratio:.2f}× ({predict['device']})",
                          ratio >= goal, predict["load"]))
    if serve := figures.get("serve"):
        workers = f", `--workers {serve['workers']}`" if serve["workers"] != 1 else ""
        if level := serve["concurrency"].get("32"):
            table.append((f"gateway, concurrency 32{workers}", "bare batched `model.predict`", "≥ 0.8×",
                          f"{level['vs_bare']:.2f}× ({level['rate']:.0f} req/s)", level["vs_bare"] >= 0.8,
                          serve["load"]))
            table.append((f"gateway, concurrency 32{workers}", "the batch path (decode + predict)", "≥ 0.8×",
                          (f"{level['vs_batch_path']:.2f}× (the check of each upload alone bounds it at "
                           f"{serve['check_bound']:.2f}×)"), level["vs_batch_path"] >= 0.8, serve["load"]))
        if level := serve["concurrency"].get("1"):
            table.append((f"gateway, concurrency 1{workers}", "—", "p50 ≤ 5 ms, p99 ≤ 10 ms",
                          f"p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms",
                          level["p50_ms"] <= 5 and level["p99_ms"] <= 10, serve["load"]))
    if overhead := figures.get("overhead"):
        seconds = overhead["noop_run_s"]
        floors = f"Python start + import {overhead['import_s']:.2f} s; Dagster's floor {overhead['floor_s']:.2f} s"
        table.append(("no-op one-partition run", floors, "< 2 s", f"{seconds:.2f} s", seconds < 2, overhead["load"]))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of overhead, augment and predict")
    parser.add_argument("--requests", type=int, default=2000, help="gateway requests per concurrency level")
    parser.add_argument("--workers", type=int, default=1, help="gateway processes (serve --workers)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"a comma-separated subset of {','.join(BENCHES)}")
    args = parser.parse_args()
    chosen = args.only.split(",")
    if unknown := sorted(set(chosen) - set(BENCHES)):
        parser.error(f"--only: no bench {', '.join(unknown)} (choose from {', '.join(BENCHES)})")
    extra = {"overhead": ["--repeats", str(args.repeats)], "augment": ["--repeats", str(args.repeats)],
             "predict": ["--repeats", str(args.repeats)],
             "serve": ["--requests", str(args.requests), "--concurrency", "1,32", "--workers", str(args.workers)]}
    load, began = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M")
    figures = {}
    with tempfile.TemporaryDirectory(prefix="fashion-bench-table-") as tmp:
        for name in (b for b in BENCHES if b in chosen):
            figures[name] = run_bench(name, extra[name], Path(tmp) / f"{name}.json")

    print(f"\n{os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before, "
          f"started {began}; "
          + ", ".join(f"{name} {f['seconds']:.0f} s" for name, f in figures.items()) + "\n")
    print("| stage | compared with | goal | measured | met | load (1 min) |")
    print("|---|---|---|---|---|---|")
    for stage, baseline, goal, measured, met, bench_load in rows(figures):
        print(f"| {stage} | {baseline} | {goal} | {measured} | {'yes' if met else '**no**'} | {bench_load[0]:.1f} |")


if __name__ == "__main__":
    main()
