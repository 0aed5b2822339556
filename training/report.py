"""Evaluation outputs: results.json, a markdown table shaped like the paper's Table 2, and a
recall@k plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.evaluate import (
    CURVE_MAX_K,
    Case,
    MethodResult,
    bootstrap_draws,
    paired_difference,
)

TABLE_METRICS = ("AUC", "R@20", "P@20", "nDCG@20", "R@100", "P@100", "nDCG@100")
REFERENCE_METRICS = ("nDCG@20 (ref.)", "nDCG@100 (ref.)")
PAIRED_METRICS = ("AUC", "R@20", "R@100", "nDCG@20")


def slices(cases: list[Case]) -> dict[str, np.ndarray]:
    return {
        "all": np.ones(len(cases), dtype=bool),
        "new items": np.array([c.new_items for c in cases], dtype=bool),
        "new users": np.array([c.new_user for c in cases], dtype=bool),
    }


def summarise(
    results: list[MethodResult],
    cases: list[Case],
    seed: int = 0,
    subject: str | None = None,
    user_ids: np.ndarray | None = None,
) -> dict:
    """Every method's means and intervals per slice, from one set of bootstrap resamples per
    slice shared by all methods; with ``subject`` (a method's name), its paired difference
    to every other method; and every basket's metrics, so any pair can be compared later."""
    masks = slices(cases)
    rng = np.random.default_rng(seed)
    draws = {name: bootstrap_draws(int(mask.sum()), rng) for name, mask in masks.items()}
    summary: dict = {
        "baskets": {name: int(mask.sum()) for name, mask in masks.items()},
        "methods": {
            result.name: {
                "slices": {name: result.summary(mask, draws[name]) for name, mask in masks.items()},
                "recall_curve": np.mean(result.curves, axis=0).tolist() if result.curves else [],
            }
            for result in results
        },
        "per_basket": {
            "cases": [
                {
                    "user": int(c.query.user) if user_ids is None else str(user_ids[c.query.user]),
                    "time": int(c.query.time),
                    "candidates": len(c.query.candidates),
                    "relevant": int(c.relevant.sum()),
                    "new_user": c.new_user,
                    "new_items": c.new_items,
                }
                for c in cases
            ],
            "methods": {
                result.name: {metric: result.values(metric).tolist() for metric in result.rows[0]}
                for result in results
                if result.rows
            },
        },
    }
    by_name = {result.name: result for result in results}
    if subject is not None and subject in by_name and by_name[subject].rows:
        mine = by_name[subject]
        summary["paired"] = {
            "subject": subject,
            "against": {
                other.name: {
                    name: {
                        metric: paired_difference(
                            mine.values(metric)[mask], other.values(metric)[mask], draws[name]
                        )
                        for metric in PAIRED_METRICS
                    }
                    for name, mask in masks.items()
                }
                for other in results
                if other.name != subject and other.rows
            },
        }
    return summary


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


def _difference(stats: dict[str, float]) -> str:
    if np.isnan(stats["mean"]):
        return "-"
    return f"{stats['mean']:+.4f} [{stats['low']:+.3f}, {stats['high']:+.3f}]"


def paired_table(summary: dict, slice_name: str) -> str:
    """The subject minus each other method, per basket, with paired bootstrap intervals."""
    paired = summary["paired"]
    lines = [
        f"Paired differences on the same baskets: {paired['subject']} minus each method "
        "(mean [95 % paired bootstrap interval]; an interval above zero is a win the "
        "resampling confirms):",
        "",
        "| Against | " + " | ".join(PAIRED_METRICS) + " |",
        "| --- | " + " | ".join("---:" for _ in PAIRED_METRICS) + " |",
    ]
    for name, slices_ in paired["against"].items():
        stats = slices_[slice_name]
        lines.append(
            f"| {name} | " + " | ".join(_difference(stats[m]) for m in PAIRED_METRICS) + " |"
        )
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
    if "paired" in summary:
        parts += ["", paired_table(summary, "all")]
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
        if counts[name] and "paired" in summary:
            parts += ["", paired_table(summary, name)]
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
