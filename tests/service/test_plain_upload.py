"""`plain_upload` reads uploads without the request model (issue 17, for speed): for every
document it reads, it must give exactly the Upload the model gives, and it must read none that
the model refuses (those the model reads, so every 422 and every load's error stays its own).
Checked on documents varied field by field around every limit, and on random metadata."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from service.api.items import MAX_EDITION, MAX_METADATA_DEPTH, ItemIn, plain_upload
from service.ingest import Upload
from service.upload_json import loads

VECTOR = np.arange(4, dtype=np.float32)
BASE: dict[str, Any] = {"id": "w-1", "artist_id": "a-1", "features_b64": "AAAAAA=="}

# Values each field is given in turn, around the model's limits and types.
IDS = ["w", "x" * 200, "x" * 201, "", "a/b", "a b", "a\tb", "é", "a\x1c", "a\x00", "\ud800"]
IDS += [7, None]
COUNTS = [None, 0, 1, 5, MAX_EDITION, MAX_EDITION + 1, -1, True, False, 2.0, 2.5, "3", [1]]
FEATURES: list[Any] = [VECTOR, [0.5, 1.0], [], None, "x", {"a": 1}]
BASE64: list[Any] = ["AAAAAA==", "", "not base64!", None, 3, ["x"]]
TEXTS: list[Any] = ["Dusk", "", "x" * 500, "x" * 501, "é" * 500, "\ud800", None, 3, ["x"]]
PRICES: list[Any] = [0, 350, 3.5, -0.0, -1, -0.5, 2**53, 2**53 + 1, 10**400, 1e308]
PRICES += [math.inf, math.nan, True, "3", None]
TAG_LISTS: list[Any] = [[], ["a", "b"], ["x" * 100], ["x" * 101], ["a"] * 50, ["a"] * 51]
TAG_LISTS += [[1], ["\ud800"], None, "a", [None]]
OTHERS: list[Any] = [None, 1, -(2**70), 0.5, math.inf, -math.inf, math.nan, True, "x", "\udfff"]
OTHERS += [[], {}, [1, None, "y"], {"k": None}, {"\ud800": 1}, {"a": [math.nan]}, ("t",)]


def nested(depth: int, leaf: Any) -> Any:
    """`leaf` inside `depth` levels of lists and objects, alternately."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def documents() -> list[Any]:
    """Uploads varied one field (or a pair) at a time, and some that are no upload at all."""
    found: list[Any] = [None, [], "x", 3, {}, dict(BASE, image_b64="AAAA"), dict(BASE, extra=1)]
    for key, values in (("id", IDS), ("artist_id", IDS), ("features_b64", BASE64)):
        found += [{**BASE, key: value} for value in values]
    found += [{**BASE, "edition_size": e, "stock": s} for e, s in itertools.product(COUNTS, COUNTS)]
    plain = {k: v for k, v in BASE.items() if k != "features_b64"}
    for features, encoded in itertools.product(FEATURES, [*BASE64[:2], None]):
        found.append({**plain, "features": features, "features_b64": encoded})
    found.append({**plain, "features": VECTOR})  # no features_b64 key at all
    found += [{**BASE, "metadata": value} for value in [None, [], "x", {}, {"title": None}]]
    for key, values in (("title", TEXTS), ("image_url", TEXTS), ("price", PRICES)):
        found += [{**BASE, "metadata": {key: value}} for value in values]
    found += [{**BASE, "metadata": {"image_url": "u" * n}} for n in (2048, 2049)]
    found += [{**BASE, "metadata": {"tags": tags}} for tags in TAG_LISTS]
    found += [{**BASE, "metadata": {"other": value, "title": "t"}} for value in OTHERS]
    depths = range(MAX_METADATA_DEPTH - 2, MAX_METADATA_DEPTH + 2)
    for depth, leaf in itertools.product(depths, [1, [], {}]):
        found.append({**BASE, "metadata": {"deep": nested(depth, leaf)}})
    return found


def read_by_the_model(document: Any) -> Upload | None:
    try:
        return ItemIn.model_validate(document).upload()
    except ValidationError:
        return None


def assert_same(got: Upload, expected: Upload) -> None:
    for field in ("id", "artist_id", "edition_size", "stock", "features_b64", "image_b64"):
        assert getattr(got, field) == getattr(expected, field), field
        assert type(getattr(got, field)) is type(getattr(expected, field)), field
    assert got.features is expected.features  # the array as read, not a copy
    assert list(got.metadata.items()) == list(expected.metadata.items())  # in the same order
    assert repr(got.metadata) == repr(expected.metadata)  # 350.0, not 350


@pytest.mark.parametrize("document", documents(), ids=repr)
def test_a_plain_reading_is_the_models_or_none(document: Any) -> None:
    expected, got = read_by_the_model(document), plain_upload(document)
    if got is not None:
        assert expected is not None, "read an upload the model refuses"
        assert_same(got, expected)


def random_value(rng: random.Random, depth: int) -> Any:
    """A JSON value, now and then one the model refuses somewhere inside."""
    if rng.random() < 0.03:
        return rng.choice(["\ud800", math.inf, math.nan])
    kind = rng.randrange(6 if depth <= MAX_METADATA_DEPTH else 3)
    if kind < 3:
        return rng.choice(["a", "é", "", 0, -7, 2**64, 0.5, -1e300, False, None])
    if kind < 5:
        keys = rng.sample(["title", "price", "k", "é", "z", "\ud800"], 2)
        return {key: random_value(rng, depth + 1) for key in keys}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(3))]


def random_metadata(rng: random.Random) -> dict[str, Any]:
    """The model's fields, mostly valid, and other keys of random values."""
    metadata: dict[str, Any] = {}
    for key, choices in (("title", TEXTS[:4]), ("price", PRICES[:5]), ("tags", TAG_LISTS[:4])):
        if rng.random() < 0.5:
            metadata[key] = rng.choice([*choices, None])
    for key in rng.sample(["a", "b", "title ", "_x", "é"], rng.randrange(4)):
        metadata[key] = random_value(rng, 1)
    return metadata


def test_random_metadata_reads_as_the_model_reads_it() -> None:
    rng = random.Random(0)
    plainly_read = 0
    for _ in range(3000):
        metadata = random_metadata(rng)
        document = {**BASE, "metadata": metadata}
        expected, got = read_by_the_model(document), plain_upload(document)
        if got is not None:
            assert expected is not None, metadata
            assert_same(got, expected)
            plainly_read += 1
    assert plainly_read > 1000  # the corpus does reach the plain reading


def test_the_common_uploads_are_read_plainly() -> None:
    """What a catalogue sends: the plain reading must take it, or it buys nothing."""
    lines = [
        b'{"id": "w-1", "artist_id": "a-1", "features": [0.5, 1.5], "edition_size": 10, '
        b'"stock": 7, "metadata": {"title": "Dusk", "price": 350, "tags": ["oil"], '
        b'"image_url": "https://example.com/w-1.jpg", "medium": {"kind": "oil", "cm": [40, 50]}}}',
        b'{"id": "w-2", "artist_id": "a-1", "features_b64": "AACAPw=="}',
        b'{"id": "caf\\u00e9-3", "artist_id": "a-2", "features": [1], '
        b'"metadata": {"title": "Caf\\u00e9"}}',
    ]
    for line in lines[:2]:
        document = loads(line)
        expected = read_by_the_model(document)
        got = plain_upload(document)
        assert got is not None
        assert expected is not None
        assert_same(got, expected)
    assert plain_upload(loads(lines[2])) is None  # a non-ASCII id: the model reads it
