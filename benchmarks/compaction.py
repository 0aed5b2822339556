"""Searches while an HNSW index compacts: how long a search takes before, during and after the
rebuild that drops a fifth of the slots' tombstones, and how long the rebuild takes.

Why: at a million works the rebuild takes minutes. Built under the index's lock, it held every
search of the process for all of it; built beside the graph that serves (service.index), the
searches should go on at about their usual latency, slowed only by sharing the cores with the
build. In this process, on the index alone (no HTTP, no store): random 65-d works, one
customer's four interest vectors per search, k = 20, two purchases left out; the index's
defaults (the graph built on one thread, searched on two).

    .venv/bin/python benchmarks/compaction.py                  # 100,000 works, about a minute
    .venv/bin/python benchmarks/compaction.py --works 1000000  # about ten minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from serve import ROOT, percentiles, results_header, write_results

from service.index import REBUILD_TOMBSTONE_SHARE, ItemIndex

DIM = 65  # the shipped models' embedding size
INTERESTS = 4
K = 20
ADDED_AT_ONCE = 50_000


def filled(works: int, seed: int) -> ItemIndex:
    vectors = np.random.default_rng(seed).normal(size=(works, DIM)).astype(np.float32)
    index = ItemIndex(DIM, "hnsw")
    for start in range(0, works, ADDED_AT_ONCE):
        end = min(works, start + ADDED_AT_ONCE)
        ids = [f"work-{n}" for n in range(start, end)]
        index.upsert(
            np.arange(start, end), ids, ["artist"] * len(ids), vectors[start:end], [0.0] * len(ids)
        )
    return index


def search_seconds(index: ItemIndex, queries: np.ndarray, count: int) -> list[float]:
    spent = []
    for n in range(count):
        began = time.perf_counter()
        index.search(queries[n % len(queries)], K, {"work-1", "work-2"})
        spent.append(time.perf_counter() - began)
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--works", type=int, default=100_000)
    parser.add_argument("--searches", type=int, default=500, help="timed before and after")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "compaction.json"
    )
    args = parser.parse_args(argv)
    results: dict[str, Any] = results_header("compaction", args, {"dim": DIM, "k": K})
    began = time.perf_counter()
    index = filled(args.works, args.seed)
    results["build_s"] = time.perf_counter() - began
    rng = np.random.default_rng(args.seed + 1)
    queries = rng.normal(size=(200, INTERESTS, DIM)).astype(np.float32)
    results["before"] = percentiles(search_seconds(index, queries, args.searches))
    removed = int(args.works * REBUILD_TOMBSTONE_SHARE) + 1
    began = time.perf_counter()
    index.remove(np.arange(removed))  # the removal that passes the share starts the rebuild
    results["removal_s"] = time.perf_counter() - began
    during: list[float] = []
    while index.compacting:
        during += search_seconds(index, queries, 20)
    results["compaction_s"] = time.perf_counter() - began
    results["during"] = {
        "searches": len(during),
        **percentiles(during or [0.0]),
        "max_ms": max(during, default=0.0) * 1000,
    }
    results["after"] = percentiles(search_seconds(index, queries, args.searches))
    write_results(results, args.out)
    print(
        f"{args.works} works, built in {results['build_s']:.1f} s; removing {removed} "
        f"returned after {results['removal_s']:.2f} s; the rebuild took "
        f"{results['compaction_s']:.1f} s"
    )
    for phase in ("before", "during", "after"):
        figures = results[phase]
        print(
            f"searches {phase}: p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
            + (
                f", slowest {figures['max_ms']:.1f} ms of {figures['searches']}"
                if phase == "during"
                else ""
            )
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
