"""json.loads / json.dumps for the runtime's start-up path, without `json`'s imports.

`import json` pulls in json.decoder and json.encoder, which import `re`,
which imports `enum`, `functools` and `collections`: about 13 ms of a
~70 ms `dockyard-runc run`. The work itself is done by `_json`, the C
accelerator json uses, which imports nothing; this module drives it
directly, configured exactly as json's default decoder and encoder are.

Only the common case takes the fast path: str, or UTF-8 bytes without a
BOM. Anything else (other encodings, malformed input, unsupported types)
goes to `json` itself, so results, exceptions (json.JSONDecodeError, a
ValueError with json's message and position) and edge cases are json's by
construction. Without `_json` (another Python) this is `json`.
"""

from __future__ import annotations

# typing costs ~4 ms of start-up on `dockyard-runc run`; annotations only need it
# for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]

_WHITESPACE = " \t\n\r"  # json's insignificant whitespace, nothing else


def _slow() -> Any:
    import json
    return json


class _DecoderContext:
    """The attributes `_json.make_scanner` reads, as json.JSONDecoder() sets them."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def _type_error(obj: Any) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


if _json is not None:
    _scan_once = _json.make_scanner(_DecoderContext())
    _encode_str = _json.encode_basestring_ascii
    # json.dumps()'s defaults: ensure_ascii, check_circular, allow_nan, no
    # indent, separators (", ", ": "), unsorted keys.
    _encoder_args = (_type_error, _encode_str, None, ": ", ", ", False, False, True)


def loads(data: str | bytes | bytearray) -> Any:
    """json.loads(data), with json's result and errors."""
    if _json is None:
        return _slow().loads(data)
    text = data
    if type(data) is not str:
        # Only UTF-8 (json's default guess) here: a BOM or NUL among the first
        # bytes means another encoding, which json detects.
        if (type(data) not in (bytes, bytearray) or data[:1] in (b"\xef", b"\xfe", b"\xff")
                or 0 in data[:4]):
            return _slow().loads(data)
        try:
            text = data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return _slow().loads(data)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan_once(text, start)
    except (StopIteration, ValueError, SystemError):
        # SystemError: _json raises json.decoder.JSONDecodeError only when
        # json.decoder is already imported; else it fails without an exception.
        value, end = None, -1
    if end != len(text.rstrip(_WHITESPACE)):
        # Malformed or trailing data: json says where, in its own words.
        return _slow().loads(data)
    return value


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """json.dumps(obj) or json.dumps(obj, indent=N), with json's output and errors."""
    if _json is None:
        return _slow().dumps(obj, indent=indent)
    try:
        if indent is None:
            return "".join(_json.make_encoder({}, *_encoder_args)(obj, 0))
        return _indented(obj, " " * indent, "\n")
    except (TypeError, ValueError, RecursionError):
        # Unsupported values or a cycle: json's own exception, message and all.
        return _slow().dumps(obj, indent=indent)


def _indented(obj: Any, step: str, newline: str) -> str:
    """json.dumps(obj, indent=len(step)) for str-keyed dicts, lists and tuples.

    The C encoder has no indent; json's Python one imports `re`. Scalars and
    empty containers go through the C encoder, so they print as json's do.
    """
    inner = newline + step
    if isinstance(obj, dict) and obj:
        if not all(type(key) is str for key in obj):
            raise TypeError("non-str keys: left to json")
        items = [_encode_str(key) + ": " + _indented(value, step, inner)
                 for key, value in obj.items()]
        return "{" + inner + ("," + inner).join(items) + newline + "}"
    if isinstance(obj, (list, tuple)) and obj:
        items = [_indented(value, step, inner) for value in obj]
        return "[" + inner + ("," + inner).join(items) + newline + "]"
    return "".join(_json.make_encoder({}, *_encoder_args)(obj, 0))
