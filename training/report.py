"""Evaluation outputs: results.json, a markdown table shaped like the paper's Table 2, and a
recall@k plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.evaluate import CURVE_MAX_K, Case, MethodResult

TABLE_METRICS = ("AUC", "R@20", "P@20", "nDCG@20", "R@100", "P@100", "nDCG@100")
REFERENCE_METRICS = ("nDCG@20 (ref.)", "nDCG@100 (ref.)")


def slices(cases: list[Case]) -> dict[str, np.ndarray]:
    return {
        "all": np.ones(len(cases), dtype=bool),
        "new items": np.array([c.new_items for c in cases], dtype=bool),
        "new users": np.array([c.new_user for c in cases], dtype=bool),
    }


def summarise(results: list[MethodResult], cases: list[Case], seed: int = 0) -> dict:
    masks = slices(cases)
    rng = np.random.default_rng(seed)
    return {
        "baskets": {name: int(mask.sum()) for name, mask in masks.items()},
        "methods": {
            result.name: {
                "slices": {name: result.summary(mask, rng) for name, mask in masks.items()},
                "recall_curve": np.mean(result.curves, axis=0).tolist() if result.curves else [],
            }
            for result in results
        },
    }


def _cell(stats: dict[str, float]) -> str:
    if np.isnan(stats["mean"]):
        return "-"
    return f"{stats['mean']:.4f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def markdown_table(summary: dict, slice_name: str, metrics: tuple[str, ...]) -> str:
    rows = sorted(
        summary["methods"].items(),
        key=lambda item: -item[1]["slices"][slice_name]["AUC"]["mean"],
    )
    lines = [
        "| Method | " + " | ".join(metrics) + " |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " |",
    ]
    for name, method in rows:
        stats = method["slices"][slice_name]
        lines.append(f"| {name} | " + " | ".join(_cell(stats[m]) for m in metrics) + " |")
    return "\n".join(lines)


def markdown_report(summary: dict, title: str) -> str:
    counts = summary["baskets"]
    parts = [
        f"# {title}",
        "",
        f"Held-out baskets: {counts['all']} (one per customer with at least two baskets), "
        "each ranked against every artwork for sale at that moment. Cells: mean "
        "[95 % bootstrap interval over customers]. Sorted by AUC.",
        "",
        markdown_table(summary, "all", TABLE_METRICS),
        "",
        "nDCG as computed by the reference implementation (its ideal DCG counts only the hits "
        "inside the top k, so missed items do not lower it); reported apart, not comparable "
        "with standard nDCG:",
        "",
        markdown_table(summary, "all", REFERENCE_METRICS),
    ]
    for name, explanation in (
        (
            "new items",
            "every item of the basket was uploaded after the customer's last earlier purchase",
        ),
        ("new users", "the customer had a single earlier basket"),
    ):
        parts += [
            "",
            f"## Cold start: {name} ({counts[name]} baskets; {explanation})",
            "",
            markdown_table(summary, name, TABLE_METRICS) if counts[name] else "No such basket.",
        ]
    return "\n".join(parts) + "\n"


def plot_recall(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    ks = np.arange(1, CURVE_MAX_K + 1)
    for name, method in summary["methods"].items():
        axes.plot(ks, method["recall_curve"], label=name)
    axes.set_xlabel("k")
    axes.set_ylabel("recall@k")
    axes.set_title(f"Recall@k over {summary['baskets']['all']} held-out baskets")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(summary: dict, out_dir: Path, title: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "table.md").write_text(markdown_report(summary, title))
    plot_recall(summary, out_dir / "recall_at_k.png")
