"""Upload JSON (a `POST /items` body, a line of a bulk load) parsed with each work's feature
vector straight into numpy.

Why: a batch of 1,000 works of 2,048 numbers is two million numbers. Python's json module,
orjson, msgspec and pydantic's own parser all make a Python float of each, at about 90 ns apiece
on the 2-core machine the README measures on (180 ms a batch before any check), and numpy
then reads them back one by one. simdjson parses them into C doubles at about a quarter of
that and hands a work's `features` over as one array.

`loads` returns what `json.loads` returns, except that the `features` of each upload (of the
top-level object, and of each object in its top-level `items` array) comes as a float32
ndarray when it is a flat array of numbers: what `list[StrictFloat]` accepts, converted as
`np.asarray(values, np.float32)` converts. Whatever simdjson refuses or could read otherwise
(NaN, numbers beyond a double, lone surrogates, encodings other than UTF-8, a repeated key, a
nested array inside `features`) is read by `json.loads` instead, so every answer to such a
body (400, 422 and their messages) stays what it was.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import simdjson

# The key of an upload's feature vector (service.api.items.ItemIn).
FEATURES = "features"
# Documents up to this size are parsed by a parser each thread keeps. A new parser allocates
# buffers about five times the document's size and touches every page of them: 30 µs for a
# bulk load's 11 KB line, more than parsing it; 20 to 45 ms for a POST /items batch of 1,000
# works as JSON lists (16 MB), half again the parsing. The bound covers such a batch; a thread
# that parsed one keeps about 80 MB (the event loop's, one per worker process), and a larger
# body gets a parser of its own, so that none keeps hundreds of megabytes after it.
REUSED_UP_TO = 32 << 20
_kept = threading.local()


class _Unusual(Exception):
    """A document `json.loads` must read: simdjson's reading could differ from it."""


def loads(data: bytes) -> Any:
    """`json.loads(data)`, each upload's flat `features` array a float32 ndarray."""
    arrays = [0, 0]  # the feature vectors in the result, and a batch's `items` list
    try:
        document = _parser(len(data)).parse(data)
        # Beyond float32 becomes inf, as numpy makes it (refused later as not finite).
        with np.errstate(over="ignore"):
            if isinstance(document, simdjson.Object):
                result = _object(document, arrays, batch=True)
            else:
                result = _plain(document)
    except (ValueError, TypeError, RuntimeError, RecursionError, _Unusual):
        return json.loads(data)
    # Each array of the document has its own '[' in the text, and a '[' in a string adds one:
    # as many '[' as arrays in the result means that no feature vector held a nested array
    # (as_buffer flattens those). Else, or with a '[' in a string, json.loads reads it. The
    # other lists of the result (tags, say) are counted only when the text has more '[' than
    # the vectors and the `items` list.
    vectors, known = arrays[0], sum(arrays)
    if vectors and _brackets(data, known + 1) != known:
        every = vectors + _lists(result)
        if _brackets(data, every + 1) != every:
            return json.loads(data)
    return result


def _parser(size: int) -> simdjson.Parser:
    """A parser for a document of `size` bytes: this thread's own for a small one. Nothing
    that a parser's document gave (simdjson's proxies) outlives `loads`, so it can be reused:
    an exception's traceback that held some was dropped with the exception."""
    if size > REUSED_UP_TO:
        return simdjson.Parser()
    parser = getattr(_kept, "parser", None)
    if parser is None:
        parser = _kept.parser = simdjson.Parser()
    return parser


def _brackets(data: bytes, most: int) -> int:
    """How many '[' `data` holds, counting no further than `most`: each found by `find`
    (memchr), where `count` reads byte by byte, a third of the time of reading a line's
    2,048 numbers."""
    found, at = 0, data.find(b"[")
    while at >= 0 and found < most:
        found += 1
        at = data.find(b"[", at + 1)
    return found


def _lists(value: Any) -> int:
    """The lists in `value` (feature vectors, as arrays, are not), walked level by level: a
    document nested a thousand deep costs no recursion."""
    found, level = 0, [value]
    while level:
        inner: list[Any] = []
        for item in level:
            if type(item) is list:
                found += 1
                inner += item
            elif type(item) is dict:
                inner += item.values()
        level = inner
    return found


def _object(value: simdjson.Object, arrays: list[int], batch: bool) -> dict[str, Any]:
    """An upload, its `features` a vector; with `batch` (the top-level object), also each
    object of its `items` array. Counts the vectors in `arrays[0]`, the list in `arrays[1]`."""
    converted: dict[str, Any] = {}
    for key, inner in _fields(value):
        if key == FEATURES and isinstance(inner, simdjson.Array):
            converted[key] = _vector(inner)
            arrays[0] += 1
        elif batch and key == "items" and isinstance(inner, simdjson.Array):
            arrays[1] += 1
            converted[key] = [
                _object(item, arrays, batch=False)
                if isinstance(item, simdjson.Object)
                else _plain(item)
                for item in inner
            ]
        else:
            converted[key] = _plain(inner)
    return converted


def _plain(value: Any) -> Any:
    """`value` as json.loads gives it: simdjson's own conversion, which keeps the last value of
    a repeated key at the place of its first, as json.loads does."""
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _fields(value: simdjson.Object) -> list[tuple[str, Any]]:
    """The object's keys and values, containers as simdjson's proxies (its `items()` would
    convert them whole); _Unusual for a repeated key, whose last value json.loads keeps."""
    keys = list(value)
    if len(set(keys)) != len(keys):
        raise _Unusual
    return [(key, value[key]) for key in keys]


def _vector(values: simdjson.Array) -> np.ndarray:
    """A flat array of numbers as float32 (TypeError for anything but numbers; a nested
    array is flattened, which the count of arrays in `loads` finds out)."""
    return np.frombuffer(values.as_buffer(of_type="d"), dtype=np.float64).astype(np.float32)
