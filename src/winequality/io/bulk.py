"""Large request bodies whose cells are all numbers, read straight into arrays (simdjson).

A 10,000-row body holds 110,000 numbers. Parsed into Python objects (orjson) and then copied
into a matrix (numpy), they cost about 8 ms; simdjson parses the body once and hands each array
of numbers over as a buffer of doubles, with no Python object per number: about 1.5 ms. These
functions only *find* such arrays: any body that is not plainly the expected form, any cell
that is not a number (null, text, a boolean, a number past double range), a repeated key,
answers None, and the caller reads the body the general way, which names every problem. So
what is accepted, and every value, is the same on both paths; only the time differs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_BYTES", "document", "elements", "matrix", "numbers", "plain_object", "python"]

# Below this, the general path is as fast (the work is per request, not per number).
MIN_BYTES = 32 * 1024


def document(content: bytes) -> Any:
    """The parsed body (a simdjson proxy, valid until it is dropped), or None if simdjson
    does not read it (not JSON, invalid UTF-8, `NaN`: the general path then decides)."""
    import simdjson

    try:
        return simdjson.Parser().parse(content)  # a parser of its own: nothing is shared
    except (ValueError, RuntimeError, UnicodeDecodeError):
        return None


def plain_object(value: Any) -> bool:
    """An object whose keys each appear once (JSON allows repeats; readers differ on which
    one wins, so such bodies go the general way), none holding NUL."""
    import simdjson

    if not isinstance(value, simdjson.Object):
        return False
    keys = list(value.keys())
    # (a key holding NUL is listed whole but looked up cut short: the general way reads it)
    return len(keys) == len(set(keys)) and not any("\x00" in key for key in keys)


def elements(value: Any) -> list[Any] | None:
    """The elements of an array (proxies: nothing is converted), or None if not an array."""
    import simdjson

    return list(value) if isinstance(value, simdjson.Array) else None


def numbers(array: Any, count: int) -> np.ndarray | None:
    """The `count` numbers of an array (nested arrays flattened, row-major) as float64, or
    None when it holds anything but numbers, or another count."""
    import simdjson

    if not isinstance(array, simdjson.Array):
        return None
    try:
        buffer = array.as_buffer(of_type="d")
    except (TypeError, ValueError):  # a cell that is not a number, or past double range
        return None
    values = np.frombuffer(buffer, dtype=np.float64)
    return values if values.size == count else None


def matrix(rows: Any, width: int) -> np.ndarray | None:
    """A non-empty array of rows, each an array of `width` numbers, as an (n, width) float64
    matrix; None otherwise (a row of another length, a row that is not an array...)."""
    import simdjson

    if not isinstance(rows, simdjson.Array) or not len(rows):
        return None
    array = simdjson.Array
    for row in rows:  # (a text row of the same length would flatten to nothing)
        if not isinstance(row, array) or len(row) != width:
            return None
    values = numbers(rows, len(rows) * width)
    return None if values is None else values.reshape(-1, width)


def python(value: Any) -> Any:
    """A (small) value as Python's JSON types: dicts, lists, strings, numbers."""
    import simdjson

    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
