"""The replay's live inventory, every method on a tiny market, the ceiling, and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from curatornet.dataset import Dataset
from curatornet.synthetic import load_truth
from tests.training.helpers import TINY_CLUSTERS
from training import baselines
from training.clusters import cluster_features
from training.data.formats import load_dataset
from training.evaluate import (
    bootstrap_draws,
    evaluate_methods,
    paired_difference,
    recall_curve,
    replay,
)
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
    return results, cases, summarise(results, cases, subject="CuratorNet")


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


def test_feature_ceiling_reads_the_style_the_features_show(tiny_market_dir: Path) -> None:
    """Features that render the style (the vector market's) let the reader recover it, and
    the scores follow the true ceiling's; features of pure noise tell nothing, and the scores
    fall back to what is known besides the style (appeal, loyalty, editions)."""
    dataset = load_dataset(tiny_market_dir)
    truth = load_truth(tiny_market_dir, dataset)
    reading = baselines.StyleReadingConfig(components=32, hidden=64, folds=3)
    everything = np.arange(dataset.n_items)
    query = baselines.Query(
        user=0, time=0, profile=everything[:0], candidates=everything, sales=everything * 0
    )

    def scores_of(method: baselines.Method, data: Dataset) -> np.ndarray:
        method.fit(data)
        return method.score(query)

    truthful = scores_of(baselines.Ceiling(truth), dataset)
    from_vectors = baselines.FeatureCeiling(truth, reading)
    read = scores_of(from_vectors, dataset)
    assert from_vectors.r2 > 0.8
    assert np.corrcoef(read, truthful)[0, 1] > 0.9

    noise = np.random.default_rng(0).random(dataset.features.shape).astype(np.float32)
    from_noise = baselines.FeatureCeiling(truth, reading)
    blind = scores_of(from_noise, replace(dataset, features=noise))
    assert from_noise.r2 < 0.05
    styleless = replace(truth, item_style=np.zeros_like(truth.item_style))
    assert np.corrcoef(blind, scores_of(baselines.Ceiling(styleless), dataset))[0, 1] > 0.8
    assert np.corrcoef(blind, truthful)[0, 1] < 0.5


def test_intervals_do_not_depend_on_which_methods_ran(evaluated) -> None:
    """One set of resamples per run, shared by every method; ties broken per basket."""
    results, cases, summary = evaluated
    alone = summarise([results[2]], cases)
    assert alone["methods"]["VisRank (max)"] == summary["methods"]["VisRank (max)"]
    dataset_order = evaluated[0][::-1]
    reversed_summary = summarise(dataset_order, cases)
    assert reversed_summary["methods"] == summary["methods"]


def test_paired_differences_use_the_same_baskets(evaluated) -> None:
    results, _, summary = evaluated
    paired = summary["paired"]
    assert paired["subject"] == "CuratorNet"
    assert "CuratorNet" not in paired["against"]
    by_name = {r.name: r for r in results}
    against = paired["against"]["VisRank (max)"]["all"]["AUC"]
    difference = by_name["CuratorNet"].values("AUC") - by_name["VisRank (max)"].values("AUC")
    assert against["mean"] == pytest.approx(difference.mean())
    assert against["low"] <= against["mean"] <= against["high"]
    # Paired: the interval of a difference with itself is a point, unlike two marginal ones.
    same = paired_difference(
        difference, difference, bootstrap_draws(len(difference), np.random.default_rng(0))
    )
    assert same == {"mean": 0.0, "low": 0.0, "high": 0.0}


def test_every_baskets_metrics_are_kept(evaluated) -> None:
    results, cases, summary = evaluated
    per_basket = summary["per_basket"]
    assert len(per_basket["cases"]) == len(cases)
    assert per_basket["cases"][0]["candidates"] == len(cases[0].query.candidates)
    for result in results:
        assert per_basket["methods"][result.name]["AUC"] == [row["AUC"] for row in result.rows]


def test_each_case_keeps_the_sales_of_its_moment() -> None:
    dataset = _market()
    train, held_out = split_last_basket(dataset)
    cases = list(replay(dataset, train, held_out))
    c = ITEMS.index("c")
    # Before t=25 only c (twice: t=20 and t=30?) -- at t=25, c was sold once (t=20).
    assert [int(case.query.sales[c]) for case in cases] == [1, 2, 2]


def test_inferred_edition_sizes_come_from_training_purchases_only(tmp_path: Path) -> None:
    """Without an edition_size column, a work sold twice is an edition of 2, but only when
    both sales are training data: the held-out sale must not shape the replay's inventory."""
    (tmp_path / "inventory.csv").write_text(
        "artwork_id_hash,artist_id_hash,upload_timestamp\n" + "".join(f"{i},x,0\n" for i in ITEMS)
    )
    (tmp_path / "purchases.csv").write_text(
        "user_id_hash,purchase_timestamp,artwork_id_hash\nu1,10,a\nu1,20,b\nu2,15,c\nu2,30,a\n"
        "u3,5,e\nu3,25,f\n"
    )
    np.savez(tmp_path / "features.npz", ids=np.array(ITEMS), features=np.eye(7, dtype=np.float32))
    dataset = load_dataset(tmp_path)
    assert dataset.edition_size_inferred
    assert dataset.edition_size[ITEMS.index("a")] == 2  # from all purchases
    train, held_out = split_last_basket(dataset)
    assert train.edition_size[ITEMS.index("a")] == 1  # u2's purchase of a is held out
    cases = {str(dataset.user_ids[c.query.user]): c for c in replay(dataset, train, held_out)}

    def candidates(user: str) -> list[str]:
        return sorted(dataset.item_ids[cases[user].query.candidates].tolist())

    # a was sold to u1 at t=10 and is one-of-a-kind as far as training knows: u3 at t=25 no
    # longer sees it (inferred from all purchases it would still be for sale). b, c and e
    # were sold too.
    assert candidates("u3") == ["d", "f", "g"]
    # ...but a is what u2 bought at t=30, so it is a candidate there (f went at t=25).
    assert candidates("u2") == ["a", "d", "g"]


def test_report_files(evaluated, tmp_path: Path) -> None:
    _, _, summary = evaluated
    write_report(summary, tmp_path, "tiny")
    table = (tmp_path / "table.md").read_text()
    for name in summary["methods"]:
        assert f"| {name} |" in table
    assert "## Cold start: new users" in table
    assert "Paired differences on the same baskets: CuratorNet minus each method" in table
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

    result = evaluate("random,popular,curatornet,ceiling,ceiling-features", tmp_path / "report")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| Ceiling (style read from features) |" in result.stdout
    assert "| CuratorNet, multi-interest (--model) |" in result.stdout
    assert "| VisRank (max) |" not in result.stdout  # not asked for
    assert "CuratorNet, multi-interest (--model) minus each method" in result.stdout
    assert (tmp_path / "report" / "recall_at_k.png").is_file()
    bad = evaluate("oracle", tmp_path / "x")
    assert bad.returncode == 2
    assert "unknown method(s) ['oracle']" in bad.stderr
