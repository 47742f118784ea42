"""JSON as slotd accepts it, on the wire and in its database: bounded nesting, finite
numbers, text that is UTF-8.

Python's json recurses once per level of nesting, when decoding and when encoding: a
value nested a few hundred levels deep can exhaust the interpreter's recursion limit
wherever it is next handled. So the depth is checked on the raw text, in linear time and
without recursion, before json.loads sees it. Standard library only: the store, the
protocol and the client all use it.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from itertools import accumulate
from typing import Any

# Levels of nesting a JSON text may have; a request object counts as one.
MAX_DEPTH = 32

# A JSON string, or an unterminated one running to the end of the text. Possessive, and
# able to end at the end of the text, so every match attempt that starts at a quote
# succeeds: the scan stays linear whatever the input.
_STRING = re.compile(rb'"[^"\\]*+(?:\\[\s\S]?[^"\\]*+)*+(?:"|\Z)')
# Opening brackets become +1, closing ones -1 (as signed bytes); everything else goes.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class TooDeep(ValueError):
    """A JSON text nested deeper than MAX_DEPTH."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")


def too_deep(text: bytes) -> bool:
    """True if the arrays and objects of a JSON text nest deeper than MAX_DEPTH.

    Brackets inside strings do not count. For text that is not JSON the answer is about
    how deep a parser would go before it gives up.
    """
    if text.count(b"[") + text.count(b"{") <= MAX_DEPTH:
        return False  # the common case: two scans in C
    bare = _STRING.sub(b"", text).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(array("b", bare)), default=0) > MAX_DEPTH


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def loads(text: bytes | str) -> Any:
    """Parse JSON text; ValueError (TooDeep for nesting) if slotd would not accept it.

    NaN, Infinity and numbers too large for a float (which Python's json would turn
    into inf) are refused: they could never be sent back as JSON.
    """
    if isinstance(text, str):
        raw = text.encode("utf-8", "surrogatepass")
    elif isinstance(text, (bytes, bytearray)):
        raw = bytes(text)
        # Decoded here, strictly: given bytes, json.loads would also take UTF-16 and
        # UTF-32, whose brackets the depth scan below (over UTF-8) would not see.
        text = raw.decode("utf-8")
    else:
        raise TypeError(f"JSON text must be str or bytes, not {type(text).__name__}")
    if too_deep(raw):
        raise TooDeep()
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:  # cannot happen after the depth check; never let it escape
        raise TooDeep() from None


def is_plain(value: Any, depth: int = 1) -> bool:
    """True for a value that encodes as JSON and decodes back the same: at most
    MAX_DEPTH levels, text that is UTF-8, finite numbers, integers that fit 64 bits."""
    if depth > MAX_DEPTH:
        return False
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -(1 << 63) <= value < 1 << 63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return is_text(value)
    if isinstance(value, list):
        return all(is_plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(is_text(key) and is_plain(item, depth + 1) for key, item in value.items())
    return False


def is_text(value: Any) -> bool:
    """A string that can become UTF-8 (JSON allows a lone surrogate such as "\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
