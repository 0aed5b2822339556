"""Reading the UGallery format and writing the project's own (plus, for a generated market,
its hidden tastes and generator config).

The UGallery files, as published with the paper:

- ``inventory.csv``: ``artwork_id_hash, artist_id_hash, upload_timestamp``
- ``purchases.csv``: one row per item (``user_id_hash, purchase_timestamp, artwork_id_hash``)
  or one row per basket (``user_id_hash, purchase_timestamp, purchased_artwork_ids_hash``
  holding a Python-style list literal such as ``['a1', 'b2']``)
- features: ``.npz`` with ``ids`` and ``features``; the original pickled object ``.npy`` of
  ``(id, vector)`` rows is read only when the caller opts in, because unpickling runs code.

The project's own format is the per-item UGallery layout plus an optional ``edition_size``
column in ``inventory.csv`` and ``features.npz``; anything that reads UGallery reads it.
Every error names the file and, where there is one, the line.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import math
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from curatornet.dataset import Dataset, infer_edition_size
from curatornet.synthetic import GENERATOR_VERSION, TASTES_FILE, Market

log = logging.getLogger(__name__)

INVENTORY_FILE = "inventory.csv"
PURCHASES_FILE = "purchases.csv"
FEATURES_FILE = "features.npz"
MARKET_CONFIG_FILE = "synthetic.json"  # beside a generated market: its seed and config

INVENTORY_COLUMNS = ("artwork_id_hash", "artist_id_hash", "upload_timestamp")
EDITION_COLUMN = "edition_size"
PURCHASE_ITEM_COLUMNS = ("user_id_hash", "purchase_timestamp", "artwork_id_hash")
PURCHASE_BASKET_COLUMNS = ("user_id_hash", "purchase_timestamp", "purchased_artwork_ids_hash")

# A basket list literal longer than this is refused before parsing (the parser recurses).
MAX_BASKET_LITERAL_CHARS = 100_000


class DataError(ValueError):
    """Bad input data; the message names the file and, where known, the line."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.detail = message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Inventory:
    item_ids: list[str]
    artist_ids: list[str]
    upload_time: list[int]
    edition_size: list[int] | None  # None when the file has no edition_size column
    lines: list[int]


@dataclass(frozen=True)
class PurchaseLog:
    user_ids: list[str]
    times: list[int]
    item_ids: list[str]
    lines: list[int]


def parse_timestamp(text: str) -> int:
    """Unix seconds (int or float) or an ISO 8601 date/time (naive means UTC) → whole seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"unparsable timestamp {text!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return math.floor(moment.timestamp())
    if not math.isfinite(value):
        raise ValueError(f"unparsable timestamp {text!r}")
    return math.floor(value)


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV file whose header holds ``required``."""
    if not path.is_file():
        raise DataError(path, "file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise DataError(path, "empty file (no header)")
        header = [name.strip() for name in reader.fieldnames]
        reader.fieldnames = header
        missing = [name for name in required if name not in header]
        if missing:
            raise DataError(path, f"missing column(s) {missing}; header is {header}", line=1)
        count = 0
        for row in reader:
            if None in row or any(row.get(name) is None for name in header):
                raise DataError(
                    path, f"expected {len(header)} fields, got a different count", reader.line_num
                )
            count += 1
            yield reader.line_num, {key: value.strip() for key, value in row.items()}
        if count == 0:
            raise DataError(path, "empty file (header but no rows)")


def _field(path: Path, line: int, row: dict[str, str], name: str) -> str:
    value = row[name]
    if not value:
        raise DataError(path, f"empty {name}", line)
    return value


def _timestamp(path: Path, line: int, row: dict[str, str], name: str) -> int:
    try:
        return parse_timestamp(_field(path, line, row, name))
    except ValueError as error:
        raise DataError(path, f"{name}: {error}", line) from None


def read_inventory(path: Path) -> Inventory:
    item_ids: list[str] = []
    artist_ids: list[str] = []
    upload_time: list[int] = []
    editions: list[int] = []
    lines: list[int] = []
    first_seen: dict[str, int] = {}
    has_edition = False
    for line, row in _rows(path, INVENTORY_COLUMNS):
        has_edition = EDITION_COLUMN in row
        item_id = _field(path, line, row, "artwork_id_hash")
        if item_id in first_seen:
            raise DataError(
                path,
                f"duplicate artwork_id_hash {item_id!r} (first on line {first_seen[item_id]})",
                line,
            )
        first_seen[item_id] = line
        item_ids.append(item_id)
        artist_ids.append(_field(path, line, row, "artist_id_hash"))
        upload_time.append(_timestamp(path, line, row, "upload_timestamp"))
        lines.append(line)
        if has_edition:
            editions.append(_edition_size(path, line, row[EDITION_COLUMN]))
    return Inventory(item_ids, artist_ids, upload_time, editions if has_edition else None, lines)


def _edition_size(path: Path, line: int, text: str) -> int:
    if not text:
        return 1
    try:
        size = int(text)
    except ValueError:
        raise DataError(path, f"edition_size {text!r} is not an integer", line) from None
    if size < 1:
        raise DataError(path, f"edition_size must be >= 1, got {size}", line)
    return size


def _basket_items(path: Path, line: int, text: str) -> list[str]:
    """Parse a basket list literal with a literal-only parser (no eval), then check its shape."""
    if len(text) > MAX_BASKET_LITERAL_CHARS:
        raise DataError(
            path, f"purchased_artwork_ids_hash longer than {MAX_BASKET_LITERAL_CHARS}", line
        )
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise DataError(
            path, f"purchased_artwork_ids_hash is not a list literal: {text[:80]!r}", line
        ) from None
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) and x for x in value):
        raise DataError(
            path, "purchased_artwork_ids_hash must be a list of non-empty strings", line
        )
    if not value:
        raise DataError(path, "empty basket", line)
    return [item.strip() for item in value]


def read_purchases(path: Path) -> PurchaseLog:
    """Either purchase layout, told apart by the header."""
    if not path.is_file():
        raise DataError(path, "file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]
    per_basket = PURCHASE_BASKET_COLUMNS[2] in header and PURCHASE_ITEM_COLUMNS[2] not in header
    required = PURCHASE_BASKET_COLUMNS if per_basket else PURCHASE_ITEM_COLUMNS
    log_ = PurchaseLog([], [], [], [])
    for line, row in _rows(path, required):
        user = _field(path, line, row, "user_id_hash")
        when = _timestamp(path, line, row, "purchase_timestamp")
        if per_basket:
            items = _basket_items(path, line, _field(path, line, row, required[2]))
        else:
            items = [_field(path, line, row, required[2])]
        for item in items:
            log_.user_ids.append(user)
            log_.times.append(when)
            log_.item_ids.append(item)
            log_.lines.append(line)
    return log_


def _check_matrix(
    path: Path, ids: np.ndarray, matrix: np.ndarray, expected_dim: int | None
) -> None:
    if matrix.ndim != 2:
        raise DataError(path, f"features must be a 2-D matrix, got shape {matrix.shape}")
    if len(ids) != matrix.shape[0]:
        raise DataError(path, f"{len(ids)} ids but {matrix.shape[0]} feature rows")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise DataError(path, f"empty feature matrix {matrix.shape}")
    if expected_dim is not None and matrix.shape[1] != expected_dim:
        raise DataError(path, f"features have dimension {matrix.shape[1]}, expected {expected_dim}")
    bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad_rows):
        row = int(bad_rows[0])
        raise DataError(
            path,
            f"row {row} (id {str(ids[row])!r}) has NaN or infinite values "
            f"({len(bad_rows)} such row(s) in all)",
        )
    counts = Counter(ids.tolist())
    duplicates = [item for item, count in counts.items() if count > 1]
    if duplicates:
        raise DataError(path, f"duplicate id(s) {duplicates[:5]} ({len(duplicates)} in all)")


def read_features(
    path: Path, *, allow_pickle: bool = False, expected_dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 matrix) from ``.npz`` (``ids``, ``features``), or a legacy pickled ``.npy``."""
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.suffix == ".npy":
        return _read_legacy_npy(path, allow_pickle=allow_pickle, expected_dim=expected_dim)
    if not zipfile.is_zipfile(path):
        raise DataError(path, "not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"ids", "features"} - set(archive.files)
            if missing:
                raise DataError(path, f"missing array(s) {sorted(missing)}; has {archive.files}")
            ids = archive["ids"]
            matrix = archive["features"]
    except DataError:
        raise
    except ValueError as error:
        raise DataError(
            path, f"cannot read without unpickling ({error}); store ids as strings"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(path, f"not a readable .npz file ({error})") from None
    if ids.dtype.kind not in "UO" or ids.ndim != 1:
        raise DataError(path, f"ids must be a 1-D string array, got {ids.dtype} {ids.shape}")
    if matrix.dtype.kind not in "fiu":
        raise DataError(path, f"features must be numeric, got {matrix.dtype}")
    ids = ids.astype(str)
    _check_matrix(path, ids, matrix, expected_dim)
    return ids, matrix.astype(np.float32, copy=False)


def _read_legacy_npy(
    path: Path, *, allow_pickle: bool, expected_dim: int | None
) -> tuple[np.ndarray, np.ndarray]:
    if not allow_pickle:
        raise DataError(
            path,
            "a pickled .npy can run code when loaded; pass --allow-pickle-features if you trust "
            "it (then `python -m training convert` writes a safe features.npz once)",
        )
    warnings.warn(
        f"unpickling {path}: only do this with files you trust", UserWarning, stacklevel=3
    )
    try:
        rows = np.load(path, allow_pickle=True)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(path, f"not a readable .npy file ({error})") from None
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise DataError(path, f"expected rows of (id, vector), got shape {rows.shape}")
    ids = np.asarray([str(item) for item in rows[:, 0]])
    vectors = [np.asarray(vector, dtype=np.float32).ravel() for vector in rows[:, 1]]
    dims = Counter(len(vector) for vector in vectors)
    if len(dims) > 1:
        common = dims.most_common(1)[0][0]
        row = next(i for i, vector in enumerate(vectors) if len(vector) != common)
        raise DataError(
            path,
            f"mixed feature dimensions {dict(dims)}: row {row} (id {str(ids[row])!r}) "
            f"has {len(vectors[row])}",
        )
    matrix = np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)
    _check_matrix(path, ids, matrix, expected_dim)
    return ids, matrix


def load_dataset(
    data_dir: Path | str,
    *,
    features_path: Path | str | None = None,
    allow_pickle: bool = False,
    expected_feature_dim: int | None = None,
) -> Dataset:
    """Read and validate a data directory; the result's feature rows follow the inventory."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "data directory not found")
    inventory_path = data_dir / INVENTORY_FILE
    purchases_path = data_dir / PURCHASES_FILE
    inventory = read_inventory(inventory_path)
    purchases = read_purchases(purchases_path)
    features_file = Path(features_path) if features_path else data_dir / FEATURES_FILE
    feature_ids, matrix = read_features(
        features_file, allow_pickle=allow_pickle, expected_dim=expected_feature_dim
    )

    item_index = {item_id: i for i, item_id in enumerate(inventory.item_ids)}
    feature_row = {item_id: row for row, item_id in enumerate(feature_ids.tolist())}
    rows = np.empty(len(item_index), dtype=np.int64)
    for i, item_id in enumerate(inventory.item_ids):
        row = feature_row.get(item_id)
        if row is None:
            raise DataError(
                features_file,
                f"no feature vector for artwork {item_id!r} "
                f"({INVENTORY_FILE} line {inventory.lines[i]})",
            )
        rows[i] = row
    unused = len(feature_ids) - len(rows)
    if unused:
        log.warning("%s: %d feature rows name no inventory item; ignored", features_file, unused)

    purchase_item = np.empty(len(purchases.item_ids), dtype=np.int64)
    for k, item_id in enumerate(purchases.item_ids):
        index = item_index.get(item_id)
        if index is None:
            raise DataError(purchases_path, f"unknown artwork {item_id!r}", purchases.lines[k])
        purchase_item[k] = index
    user_ids, purchase_user = np.unique(
        np.asarray(purchases.user_ids, dtype=str), return_inverse=True
    )

    inferred = inventory.edition_size is None  # the published inventory does not say
    edition_size = (
        infer_edition_size(purchase_item, len(rows))
        if inferred
        else np.asarray(inventory.edition_size, dtype=np.int64)
    )

    dataset = Dataset.build(
        item_ids=np.asarray(inventory.item_ids, dtype=str),
        artist_ids=np.asarray(inventory.artist_ids, dtype=str),
        upload_time=np.asarray(inventory.upload_time, dtype=np.int64),
        edition_size=edition_size,
        features=matrix[rows],
        user_ids=user_ids,
        purchase_user=purchase_user,
        purchase_item=purchase_item,
        purchase_time=np.asarray(purchases.times, dtype=np.int64),
        edition_size_inferred=inferred,
    )
    early = int(purchases_before_upload(dataset).sum())
    if early:
        log.warning("%s: %d purchase(s) dated before the item's upload", purchases_path, early)
    return dataset


def purchases_before_upload(dataset: Dataset) -> np.ndarray:
    """Mask of purchases dated before their item's upload: real logs have some, we report them."""
    return dataset.purchase_time < dataset.upload_time[dataset.purchase_item]


def purchases_beyond_stock(dataset: Dataset) -> int:
    """How many purchases exceed their item's edition size (a one-of-a-kind work sold twice)."""
    sold = np.bincount(dataset.purchase_item, minlength=dataset.n_items)
    return int(np.maximum(sold - dataset.edition_size, 0).sum())


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but byte-for-byte reproducible (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, array in arrays.items():
            if array.dtype == object:
                raise ValueError(f"{name}: object arrays would need pickling")
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=6)


def save_dataset(dataset: Dataset, out_dir: Path | str) -> None:
    """Write the project format: per-item UGallery CSVs (+ edition_size) and features.npz."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / INVENTORY_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow((*INVENTORY_COLUMNS, EDITION_COLUMN))
        writer.writerows(
            zip(
                dataset.item_ids.tolist(),
                dataset.artist_ids.tolist(),
                dataset.upload_time.tolist(),
                dataset.edition_size.tolist(),
                strict=True,
            )
        )
    with (out_dir / PURCHASES_FILE).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(PURCHASE_ITEM_COLUMNS)
        writer.writerows(
            zip(
                dataset.user_ids[dataset.purchase_user].tolist(),
                dataset.purchase_time.tolist(),
                dataset.item_ids[dataset.purchase_item].tolist(),
                strict=True,
            )
        )
    write_npz(out_dir / FEATURES_FILE, {"ids": dataset.item_ids, "features": dataset.features})


def save_market(market: Market, out_dir: Path | str) -> None:
    """The data set in the project format, plus the hidden tastes and the generator config."""
    out_dir = Path(out_dir)
    save_dataset(market.dataset, out_dir)
    write_npz(
        out_dir / TASTES_FILE,
        {
            "item_ids": market.dataset.item_ids,
            "user_ids": market.dataset.user_ids,
            **market.truth.arrays(),
        },
    )
    description = {
        "generator": "curatornet.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": market.seed,
        "config": asdict(market.config),
    }
    (out_dir / MARKET_CONFIG_FILE).write_text(
        json.dumps(description, indent=2, sort_keys=True) + "\n"
    )
