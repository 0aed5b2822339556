"""Upload bodies read fast (issue 17) must read as the standard library reads them: simdjson's
reading of JSON and pybase64's of base64, each falling back to Python's own wherever the two
could differ, so that no answer to any body changes."""

from __future__ import annotations

import base64
import json
import random
import re
from typing import Any

import numpy as np
import pytest

from service.ingest import b64decode
from service.upload_json import loads


def same(read: Any, expected: Any) -> bool:
    """Whether `read` is `expected` (json.loads' reading), a float32 array standing for the list
    of numbers it was read from, each as float32."""
    if isinstance(read, np.ndarray):
        with np.errstate(over="ignore"):
            return read.tolist() == np.asarray(expected, np.float32).tolist()
    if isinstance(read, dict):
        return (
            isinstance(expected, dict)
            and list(read) == list(expected)
            and all(same(read[key], expected[key]) for key in read)
        )
    if isinstance(read, list):
        return (
            isinstance(expected, list)
            and len(read) == len(expected)
            and all(same(a, b) for a, b in zip(read, expected, strict=True))
        )
    both_nan = read != read and expected != expected
    return type(read) is type(expected) and (read == expected or both_nan)


BODIES = [
    b'{"id": "a", "features": [1, 2.5, -3e-2, 0]}',
    b'{"items": [{"id": "a", "features": [0.5, 1]}, {"id": "b", "features": [2]}]}',
    b'{"items": [{"features": [1]}], "features": [3]}',
    b'{"features": [], "metadata": {"tags": ["x", "y"], "n": {"deep": [[1], [2]]}}}',
    b'{"features": [[1], [2]]}',  # nested: not a vector
    b'{"items": [{"features": [[1, 2], []]}]}',
    b'{"features": [1, true]}',
    b'{"features": [1, "0.5"]}',
    b'{"features": [1, null]}',
    b'{"features": [NaN]}',
    b'{"features": [1e400]}',
    b'{"features": [1e39, -1e39]}',  # beyond float32: inf, as numpy makes it
    b'{"features": [18446744073709551615, -9223372036854775808]}',
    b'{"features": [99999999999999999999999]}',
    b'{"features": [1], "features": "x"}',  # a repeated key: the last one
    b'{"metadata": {"a": 1, "a": [2]}, "features": [1]}',
    b'{"title": "[x]", "features": [1]}',
    b'{"title": "\\u005b", "features": [[1]]}',
    b'{"id": "\\ud800", "features": [1]}',
    b'{"id": "caf\xc3\xa9", "features": [1]}',
    b'[{"features": [1]}]',
    b'{"features": [1], "metadata": {"tags": ["a", "b"], "n": [[1], {"m": []}]}}',
    b'{"features": [[1]], "metadata": {"tags": ["a"]}}',  # nested, beside other arrays
    b'{"items": [{"features": [1, [2]], "metadata": {"t": []}}, {"features": [3]}]}',
    b'{"features": [1], "metadata": {"title": "a [b]", "tags": []}}',
    # nested, beside a '[' in a string
    b'{"items": [{"title": "[", "features": [[1]]}, {"features": [2]}]}',
    b'{"features": [1], "metadata": {"a": [1], "a": {"b": [2]}, "c": {"d": 1, "d": 2}}}',
    b'{"features": [1], "metadata": ' + b"[" * 300 + b"]" * 300 + b"}",
    b'"features"',
    b"12",
    b"null",
]


@pytest.mark.parametrize("body", BODIES)
def test_a_body_reads_as_json_loads_reads_it(body: bytes) -> None:
    assert same(loads(body), json.loads(body))


def test_only_flat_arrays_of_numbers_become_vectors() -> None:
    assert isinstance(loads(BODIES[0])["features"], np.ndarray)
    assert loads(BODIES[0])["features"].dtype == np.float32
    batch = loads(BODIES[1])
    assert all(isinstance(item["features"], np.ndarray) for item in batch["items"])
    assert isinstance(loads(BODIES[2])["features"], np.ndarray)  # the top level is one too
    assert loads(BODIES[3])["metadata"]["n"]["deep"] == [[1], [2]]  # not an upload's features
    for nested in (BODIES[4], BODIES[5], BODIES[17]):
        assert loads(nested) == json.loads(nested)  # read by json.loads, lists as they were
    assert loads(BODIES[6]) == {"features": [1, True]}


@pytest.mark.parametrize("body", [b"{", b'{"features": [1,]}', b"\xff\xfe{", b""])
def test_what_is_not_json_fails_as_json_loads_fails(body: bytes) -> None:
    try:
        json.loads(body)
    except ValueError as error:  # JSONDecodeError, or UnicodeDecodeError for \xff\xfe
        expected = error
    with pytest.raises(type(expected), match=f"^{re.escape(str(expected))}$"):
        loads(body)


def test_base64_decodes_as_the_standard_library_decodes() -> None:
    """pybase64 refuses some strings the library takes (padding after a complete group): the
    library decides those. What it takes, the library takes alike, on 20,000 random strings
    of the alphabet's edge characters."""
    rng = random.Random(0)
    alphabet = "AB+/=a-_ \n\xe9"
    texts = ["", "YQ", "YQ==", "YWJj=", "YWJjZA==", "YQ==YQ==", "é", "YW=j"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(20000)]
    for text in texts:
        try:
            expected: bytes | str = base64.b64decode(text, validate=True)
        except ValueError as error:
            expected = str(error)
        try:
            got: bytes | str = b64decode(text)
        except ValueError as error:
            got = str(error)
        assert got == expected, text
