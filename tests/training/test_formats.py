"""Readers and writer of the UGallery format, on the hand-written fixtures."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import FIXTURE_IDS, fixture_features, write_features
from training.data.formats import (
    DataError,
    load_dataset,
    parse_timestamp,
    purchases_before_upload,
    save_dataset,
)


def test_both_purchase_layouts_read_to_the_same_data(ugallery_dir: Path) -> None:
    dataset = load_dataset(ugallery_dir)
    assert dataset.item_ids.tolist() == FIXTURE_IDS
    assert dataset.artist_ids.tolist() == ["ar1", "ar1", "ar2", "ar2", "ar3"]
    assert dataset.upload_time.tolist() == [
        1500000000,
        1500000100,
        1500000200,
        1500000300,
        1500000400,
    ]
    assert dataset.user_ids.tolist() == ["u1", "u2", "u3"]
    purchases = sorted(
        zip(
            dataset.user_ids[dataset.purchase_user].tolist(),
            dataset.purchase_time.tolist(),
            dataset.item_ids[dataset.purchase_item].tolist(),
            strict=True,
        )
    )
    assert purchases == [
        ("u1", 1500001000, "a1"),
        ("u1", 1500001000, "a3"),
        ("u1", 1500002000, "a4"),
        ("u2", 1500001500, "a2"),
        ("u2", 1500001500, "a4"),
        ("u3", 1499999999, "a5"),
    ]


def test_feature_rows_follow_the_inventory_not_the_file(ugallery_dir: Path) -> None:
    dataset = load_dataset(ugallery_dir)
    np.testing.assert_array_equal(dataset.features, fixture_features())
    assert dataset.features.dtype == np.float32


def test_edition_size_is_inferred_from_repeat_sales_when_the_inventory_omits_it(
    ugallery_dir: Path,
) -> None:
    dataset = load_dataset(ugallery_dir)
    assert dataset.edition_size.tolist() == [1, 1, 1, 2, 1]


def test_purchases_before_upload_are_counted_not_fatal(ugallery_dir: Path, caplog) -> None:
    dataset = load_dataset(ugallery_dir)
    early = purchases_before_upload(dataset)
    assert early.sum() == 1
    assert dataset.item_ids[dataset.purchase_item[early]].tolist() == ["a5"]
    assert "1 purchase(s) dated before the item's upload" in caplog.text


def test_project_format_round_trips_exactly(ugallery_dir: Path, tmp_path: Path) -> None:
    original = load_dataset(ugallery_dir)
    save_dataset(original, tmp_path / "saved")
    header = (tmp_path / "saved" / "inventory.csv").read_text().splitlines()[0]
    assert header == "artwork_id_hash,artist_id_hash,upload_timestamp,edition_size"
    reloaded = load_dataset(tmp_path / "saved")
    for name in (
        "item_ids",
        "artist_ids",
        "upload_time",
        "edition_size",
        "features",
        "user_ids",
        "purchase_user",
        "purchase_item",
        "purchase_time",
    ):
        np.testing.assert_array_equal(getattr(reloaded, name), getattr(original, name), name)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1500000000", 1500000000),
        ("1500000000.9", 1500000000),
        ("2017-07-14T02:40:00", 1500000000),
        ("2017-07-14 02:40:00+00:00", 1500000000),
        ("2017-07-14T04:40:00+02:00", 1500000000),
        ("2017-07-14T02:40:00Z", 1500000000),
    ],
)
def test_timestamps_in_seconds_or_iso_8601(text: str, seconds: int) -> None:
    assert parse_timestamp(text) == seconds


@pytest.mark.parametrize("text", ["yesterday", "nan", "inf", "", "2017-13-40"])
def test_unparsable_timestamps_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="unparsable timestamp"):
        parse_timestamp(text)


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(
    ("file", "old", "new", "line", "message"),
    [
        (
            "inventory.csv",
            "a2,ar1",
            "a1,ar1",
            3,
            "duplicate artwork_id_hash 'a1' (first on line 2)",
        ),
        (
            "inventory.csv",
            "1500000100",
            "last tuesday",
            3,
            "upload_timestamp: unparsable timestamp",
        ),
        ("inventory.csv", "a5,ar3,", ",ar3,", 6, "empty artwork_id_hash"),
        ("inventory.csv", "a4,ar2,1500000300.5", "a4,ar2", 5, "expected 3 fields"),
        ("inventory.csv", "artist_id_hash", "artist", 1, "missing column(s) ['artist_id_hash']"),
        ("purchases.csv", "u2,1500001500,a2", "u2,1500001500,zz", 5, "unknown artwork 'zz'"),
        ("purchases.csv", "u1,1500002000,a4", "u1,soon,a4", 4, "purchase_timestamp: unparsable"),
    ],
)
def test_bad_csv_rows_name_the_file_and_line(
    per_item_dir: Path, file: str, old: str, new: str, line: int, message: str
) -> None:
    _rewrite(per_item_dir / file, old, new)
    with pytest.raises(DataError) as caught:
        load_dataset(per_item_dir)
    assert caught.value.path == per_item_dir / file
    assert caught.value.line == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"{per_item_dir / file}:{line}: ")


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("__import__('os').system('echo pwned')", "not a list literal"),
        ("['a1', 42]", "list of non-empty strings"),
        ("[]", "empty basket"),
        ("{'a1': 1}", "list of non-empty strings"),
        ("[" * 5000 + "]" * 5000, "not a list literal"),
    ],
)
def test_basket_literals_are_parsed_safely(tmp_path: Path, literal: str, message: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "inventory.csv").write_text(
        "artwork_id_hash,artist_id_hash,upload_timestamp\na1,ar1,1\n"
    )
    quoted = literal.replace('"', '""')
    (data / "purchases.csv").write_text(
        f'user_id_hash,purchase_timestamp,purchased_artwork_ids_hash\nu1,2,"{quoted}"\n'
    )
    write_features(data, ["a1"], np.ones((1, 3), np.float32))
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(data)
    assert caught.value.line == 2


@pytest.mark.parametrize("file", ["inventory.csv", "purchases.csv"])
def test_empty_files_are_refused(per_item_dir: Path, file: str) -> None:
    path = per_item_dir / file
    path.write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_dataset(per_item_dir)
    path.write_text("\n")
    with pytest.raises(DataError, match="empty file"):
        load_dataset(per_item_dir)


def test_header_without_rows_is_an_empty_file(per_item_dir: Path) -> None:
    (per_item_dir / "purchases.csv").write_text("user_id_hash,purchase_timestamp,artwork_id_hash\n")
    with pytest.raises(DataError, match="header but no rows"):
        load_dataset(per_item_dir)


def test_missing_feature_vector_names_the_item(per_item_dir: Path) -> None:
    write_features(per_item_dir, FIXTURE_IDS[:4], fixture_features()[:4])
    with pytest.raises(
        DataError, match=r"no feature vector for artwork 'a5' \(inventory.csv line 6\)"
    ):
        load_dataset(per_item_dir)


def test_wrong_feature_dimension_is_refused(per_item_dir: Path) -> None:
    with pytest.raises(DataError, match="dimension 4, expected 2048"):
        load_dataset(per_item_dir, expected_feature_dim=2048)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_the_row_and_id(per_item_dir: Path, bad: float) -> None:
    matrix = fixture_features()
    matrix[2, 1] = bad
    write_features(per_item_dir, FIXTURE_IDS, matrix)
    with pytest.raises(DataError, match=r"row 2 \(id 'a3'\) has NaN or infinite values"):
        load_dataset(per_item_dir)


def test_duplicate_feature_ids_are_refused(per_item_dir: Path) -> None:
    write_features(per_item_dir, ["a1", "a2", "a3", "a4", "a1"], fixture_features())
    with pytest.raises(DataError, match=r"duplicate id\(s\) \['a1'\]"):
        load_dataset(per_item_dir)


def test_features_that_are_not_a_matrix_are_refused(per_item_dir: Path) -> None:
    write_features(per_item_dir, FIXTURE_IDS, np.ones(5, np.float32))
    with pytest.raises(DataError, match="2-D matrix"):
        load_dataset(per_item_dir)


def test_corrupt_features_file_is_refused(per_item_dir: Path) -> None:
    (per_item_dir / "features.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"features.npz: not a readable .npz file"):
        load_dataset(per_item_dir)


def _legacy_npy(path: Path, rows: list[tuple[str, np.ndarray]]) -> Path:
    array = np.empty((len(rows), 2), dtype=object)
    for k, (item_id, vector) in enumerate(rows):
        array[k, 0] = item_id
        array[k, 1] = vector
    np.save(path, array, allow_pickle=True)
    return path


def test_pickled_npy_is_refused_without_opt_in(per_item_dir: Path) -> None:
    legacy = _legacy_npy(
        per_item_dir / "resnet_embeddings.npy",
        list(zip(FIXTURE_IDS, fixture_features(), strict=True)),
    )
    with pytest.raises(DataError, match="--allow-pickle-features"):
        load_dataset(per_item_dir, features_path=legacy)


def test_pickled_npy_is_read_with_opt_in_and_a_warning(per_item_dir: Path) -> None:
    legacy = _legacy_npy(
        per_item_dir / "resnet_embeddings.npy",
        list(zip(FIXTURE_IDS, fixture_features().astype(np.float64), strict=True))[::-1],
    )
    with pytest.warns(UserWarning, match="unpickling"):
        dataset = load_dataset(per_item_dir, features_path=legacy, allow_pickle=True)
    np.testing.assert_array_equal(dataset.features, fixture_features())


def test_pickled_npy_with_mixed_dimensions_names_the_row(per_item_dir: Path) -> None:
    rows = list(zip(FIXTURE_IDS, fixture_features(), strict=True))
    rows[3] = ("a4", np.ones(7, np.float32))
    legacy = _legacy_npy(per_item_dir / "resnet_embeddings.npy", rows)
    with (
        pytest.warns(UserWarning, match="unpickling"),
        pytest.raises(DataError, match=r"mixed feature dimensions .* row 3 \(id 'a4'\) has 7"),
    ):
        load_dataset(per_item_dir, features_path=legacy, allow_pickle=True)


def test_npz_holding_pickled_objects_is_refused(per_item_dir: Path) -> None:
    np.savez(
        per_item_dir / "features.npz",
        ids=np.asarray(FIXTURE_IDS, dtype=object),
        features=fixture_features(),
    )
    with pytest.raises(DataError, match="without unpickling"):
        load_dataset(per_item_dir)


class TouchOnUnpickle:
    """A pickle payload with a visible side effect: unpickling it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_the_unpickler_is_never_reached_without_opt_in(per_item_dir: Path) -> None:
    with (per_item_dir / "evil.npy").open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": (1,)}
        )
        pickle.dump(np.array([TouchOnUnpickle(per_item_dir / "pwned")], dtype=object), handle)
    with pytest.raises(DataError):
        load_dataset(per_item_dir, features_path=per_item_dir / "evil.npy")
    assert not (per_item_dir / "pwned").exists()
