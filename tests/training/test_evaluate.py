"""The replay's live inventory, every method on a tiny market, the ceiling, and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curatornet.dataset import Dataset
from curatornet.synthetic import load_truth
from tests.training.helpers import TINY_CLUSTERS
from training import baselines
from training.clusters import cluster_features
from training.data.formats import load_dataset
from training.evaluate import evaluate_methods, recall_curve, replay
from training.report import summarise, write_report
from training.split import split_last_basket

ITEMS = ["a", "b", "c", "d", "e", "f", "g"]


def _market() -> Dataset:
    """c is an edition of 2; d is uploaded at t=50; everything else is unique, at t=0."""
    purchases = [  # (user, time, item)
        ("u1", 10, "a"),
        ("u1", 100, "d"),
        ("u2", 20, "c"),
        ("u2", 25, "f"),
        ("u3", 30, "c"),
        ("u4", 5, "g"),
        ("u4", 45, "e"),
    ]
    users = sorted({p[0] for p in purchases})
    return Dataset.build(
        item_ids=np.array(ITEMS),
        artist_ids=np.array(["x"] * 7),
        upload_time=np.array([0, 0, 0, 50, 0, 0, 0]),
        edition_size=np.array([1, 1, 2, 1, 1, 1, 1]),
        features=np.eye(7, dtype=np.float32),
        user_ids=np.array(users),
        purchase_user=np.array([users.index(p[0]) for p in purchases]),
        purchase_item=np.array([ITEMS.index(p[2]) for p in purchases]),
        purchase_time=np.array([p[1] for p in purchases]),
    )


def test_replay_uses_the_inventory_of_the_moment() -> None:
    dataset = _market()
    train, held_out = split_last_basket(dataset)
    cases = list(replay(dataset, train, held_out))
    seen = [
        (
            str(dataset.user_ids[c.query.user]),
            c.query.time,
            sorted(dataset.item_ids[c.query.candidates].tolist()),
            dataset.item_ids[c.query.candidates[c.relevant]].tolist(),
        )
        for c in cases
    ]
    assert seen == [
        # a and g sold (unique); c has one copy left; d not uploaded yet; u2 owns c.
        ("u2", 25, ["b", "e", "f"], ["f"]),
        # c's second copy went at t=30; f was sold at 25; u4 owns g.
        ("u4", 45, ["b", "e"], ["e"]),
        # d is uploaded by now; e was sold at 45; u1 owns a.
        ("u1", 100, ["b", "d"], ["d"]),
    ]
    assert [c.new_items for c in cases] == [False, False, True]
    assert [c.new_user for c in cases] == [True, True, True]
    assert cases[0].query.profile.tolist() == [ITEMS.index("c")]


def test_popularity_counts_sales_up_to_the_moment() -> None:
    dataset = _market()
    train, held_out = split_last_basket(dataset)
    results, _ = evaluate_methods(dataset, train, held_out, [baselines.MostPopular()])
    assert len(results[0].rows) == 3


def test_recall_curve() -> None:
    np.testing.assert_allclose(recall_curve(np.array([0, 2]), max_k=4), [0.5, 0.5, 1.0, 1.0])


@pytest.fixture(scope="module")
def evaluated(tiny_market_dir: Path, tiny_run):
    model_dir, _ = tiny_run
    dataset = load_dataset(tiny_market_dir)
    train, held_out = split_last_basket(dataset)
    clusters = cluster_features(dataset.features, TINY_CLUSTERS)
    small = baselines.VBPRConfig(triples=20_000, epochs=3, batch_size=1024)
    methods = [
        baselines.RandomMethod(),
        baselines.MostPopular(),
        baselines.VisRank("max"),
        baselines.VisRank("avg"),
        baselines.VBPR(clusters.labels, clusters.reduced, "guidelines", small),
        baselines.VBPR(clusters.labels, clusters.reduced, "random", small),
        baselines.CuratorNetOnnx(model_dir),
        baselines.Ceiling(load_truth(tiny_market_dir, dataset)),
    ]
    results, cases = evaluate_methods(dataset, train, held_out, methods, progress=False)
    return results, cases, summarise(results, cases)


def test_every_method_ranks_every_basket(evaluated) -> None:
    results, cases, summary = evaluated
    assert len(cases) > 10
    for result in results:
        assert len(result.rows) == len(cases)
        for row in result.rows:
            assert all(0.0 <= value <= 1.0 for value in row.values())
    stats = summary["methods"]["Random"]["slices"]["all"]["AUC"]
    assert stats["low"] <= stats["mean"] <= stats["high"]
    assert 0.35 < stats["mean"] < 0.65


def test_ceiling_beats_every_method_on_a_market_with_strong_signal(evaluated) -> None:
    _, _, summary = evaluated
    auc = {name: m["slices"]["all"]["AUC"]["mean"] for name, m in summary["methods"].items()}
    ceiling = auc.pop("Ceiling (true tastes)")
    assert ceiling >= max(auc.values()), auc
    assert auc["CuratorNet"] > auc["Random"]


def test_report_files(evaluated, tmp_path: Path) -> None:
    _, _, summary = evaluated
    write_report(summary, tmp_path, "tiny")
    table = (tmp_path / "table.md").read_text()
    for name in summary["methods"]:
        assert f"| {name} |" in table
    assert "## Cold start: new users" in table
    assert json.loads((tmp_path / "results.json").read_text())["baskets"]["all"] > 10
    assert (tmp_path / "recall_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_command(tiny_market_dir: Path, tiny_run, tmp_path: Path) -> None:
    model_dir, _ = tiny_run

    def evaluate(methods: str, out: Path) -> subprocess.CompletedProcess:
        command = ["evaluate", "--data", str(tiny_market_dir), "--model", str(model_dir)]
        return subprocess.run(
            [sys.executable, "-m", "training", *command, "--methods", methods, "--out", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )

    result = evaluate("random,popular,curatornet,ceiling", tmp_path / "report")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| CuratorNet (guidelines) |" in result.stdout
    assert (tmp_path / "report" / "recall_at_k.png").is_file()
    bad = evaluate("oracle", tmp_path / "x")
    assert bad.returncode == 2
    assert "unknown method(s) ['oracle']" in bad.stderr
