"""Recommendation quality across several generated markets: is a lead robust, or tuned?

For each market (vectors or pictures, a seed, a scale) it runs what a user would run, through
the real command line: `python -m training synth` (skipped when the directory exists),
`python -m training train` (the multi-interest model, skipped when the model exists), and
`python -m training evaluate` with every method, the paper's CuratorNet included. Then it
prints, per method, the mean and standard deviation of AUC, R@20 and R@100 across markets,
and per market the served model's paired difference to the best baseline (mean [95 % paired
bootstrap interval] over the same customers) and how much it reaches of two oracles: the
ceiling (the hidden true tastes) and the ceiling with each work's style read from its
features (`ceiling-features`, what the features allow at best). Everything goes to JSON.

    ./dev run python benchmarks/quality.py [--markets vectors:7:0.5,pictures:7:0.5] \\
        [--preset quick] [--methods ...] [--work data/quality] \\
        [--out benchmarks/results/quality.json]

The default markets are seeds and scales the model was never tuned on (it was developed on
the 2048-d market at seed 0, scale 1). A market spec is KIND:SEED:SCALE, KIND being
`vectors` (2048-d feature vectors) or `pictures` (painted, through the image encoder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENCODER = ROOT / "models" / "encoders" / "efficientnet-lite0.json"
DEFAULT_MARKETS = "vectors:7:0.5,vectors:13:0.7,pictures:7:0.5"
# Every method but the paper's uniform-negative ablation (its own study, see the README).
DEFAULT_METHODS = (
    "random,popular,visrank,vbpr,vbpr-random,curatornet,curatornet-paper,ceiling,ceiling-features"
)
METRICS = ("AUC", "R@20", "R@100")
SUBJECT_PREFIX = "CuratorNet, multi-interest"
# The oracles: the true tastes, and the same with each work's style as its features show it.
CEILINGS = {"ceiling": "Ceiling (true tastes)", "readable": "Ceiling (style read from features)"}
NOT_BASELINES = tuple(CEILINGS.values())


def run(command: list[str]) -> float:
    """Run a training command, echoing it; returns its wall-clock seconds."""
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training", *command], cwd=ROOT, check=True)
    return time.perf_counter() - started


def market(spec: str, work: Path, preset: str, methods: str) -> dict:
    kind, seed, scale = spec.split(":")
    if kind not in ("vectors", "pictures"):
        raise SystemExit(f"error: market kind must be vectors or pictures, not {kind!r}")
    name = f"{kind}-seed{seed}-scale{scale}"
    data, model, report = work / name, work / f"{name}-model-{preset}", work / f"{name}-report"
    seconds = {}
    if not (data / "inventory.csv").is_file():
        images = ["--images"] if kind == "pictures" else []
        seconds["synth"] = run(
            ["synth", "--out", str(data), "--seed", seed, "--scale", scale, *images]
        )
    if not (model / "manifest.json").is_file():
        encoder = ["--image-encoder", str(ENCODER)] if kind == "pictures" else []
        seconds["train"] = run(
            ["train", "--data", str(data), "--out", str(model), "--preset", preset, *encoder]
        )
    evaluate = ["evaluate", "--data", str(data), "--model", str(model), "--out", str(report)]
    seconds["evaluate"] = run([*evaluate, "--methods", methods])
    results = json.loads((report / "results.json").read_text())
    return {"market": spec, "name": name, "seconds": seconds, "results": results}


def summary_of(markets: list[dict]) -> dict:
    """Per method: each metric's mean and standard deviation across markets; per market:
    the subject against the best baseline by AUC."""
    methods: dict[str, dict[str, list[float]]] = {}
    per_market = []
    for entry in markets:
        results = entry["results"]
        for name, method in results["methods"].items():
            stats = method["slices"]["all"]
            for metric in METRICS:
                methods.setdefault(name, {}).setdefault(metric, []).append(stats[metric]["mean"])
        paired = results["paired"]
        baselines = {
            name: method["slices"]["all"]["AUC"]["mean"]
            for name, method in results["methods"].items()
            if name != paired["subject"] and name not in NOT_BASELINES
        }
        best = max(baselines, key=baselines.__getitem__)
        subject = results["methods"][paired["subject"]]["slices"]["all"]
        row = {
            "market": entry["market"],
            "best_baseline": best,
            "difference": {m: paired["against"][best]["all"][m] for m in METRICS},
            "first_on": [
                m
                for m in METRICS
                if all(
                    subject[m]["mean"] > results["methods"][other]["slices"]["all"][m]["mean"]
                    for other in baselines
                )
            ],
        }
        # How much of each oracle the subject reaches: the share of the AUC headroom between
        # random (0.5) and the oracle, and the share of the oracle's recall@100.
        row["of"] = {
            key: {
                "auc_headroom": (subject["AUC"]["mean"] - 0.5) / (oracle["AUC"]["mean"] - 0.5),
                "recall_100": subject["R@100"]["mean"] / oracle["R@100"]["mean"],
            }
            for key, name in CEILINGS.items()
            if (oracle := results["methods"].get(name, {}).get("slices", {}).get("all"))
        }
        per_market.append(row)
    across = {
        name: {
            metric: {
                "mean": statistics.fmean(values),
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "markets": len(values),
            }
            for metric, values in by_metric.items()
        }
        for name, by_metric in methods.items()
    }
    return {"methods": across, "per_market": per_market}


def print_summary(summary: dict) -> None:
    rows = sorted(summary["methods"].items(), key=lambda item: -item[1]["AUC"]["mean"])
    print("\n| Method | " + " | ".join(f"{m} mean ± sd" for m in METRICS) + " |")
    print("| --- | " + " | ".join("---:" for _ in METRICS) + " |")
    for name, stats in rows:
        cells = " | ".join(f"{stats[m]['mean']:.4f} ± {stats[m]['sd']:.4f}" for m in METRICS)
        print(f"| {name} | {cells} |")
    print(
        "\n| Market | Best baseline | "
        + " | ".join(f"Δ{m} [95 % paired]" for m in METRICS)
        + " | first on | AUC headroom | R@100 / ceiling"
        + " | AUC headroom (readable) | R@100 / readable |"
    )
    print("| --- | --- | " + " | ".join("---:" for _ in METRICS) + " | --- |" + " ---: |" * 4)
    for row in summary["per_market"]:
        cells = " | ".join(
            f"{d['mean']:+.4f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            for d in (row["difference"][m] for m in METRICS)
        )
        shares = " | ".join(
            f"{row['of'][key][share]:.1%}" if key in row["of"] else "-"
            for key in CEILINGS
            for share in ("auc_headroom", "recall_100")
        )
        print(
            f"| {row['market']} | {row['best_baseline']} | {cells} | "
            f"{', '.join(row['first_on']) or '-'} | {shares} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markets", default=DEFAULT_MARKETS, help="comma list of KIND:SEED:SCALE")
    parser.add_argument("--preset", default="quick", help="training preset of every model")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="evaluate's --methods")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "quality")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "quality.json"
    )
    args = parser.parse_args()
    markets = [
        market(spec, args.work, args.preset, args.methods) for spec in args.markets.split(",")
    ]
    summary = summary_of(markets)
    print_summary(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    slim = [{k: v for k, v in m.items() if k != "results"} for m in markets]
    args.out.write_text(json.dumps({"markets": slim, **summary}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
