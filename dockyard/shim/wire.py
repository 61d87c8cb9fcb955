"""JSON for the shim's wire without importing `json` (which pulls in `re`
and `enum`, a megabyte and a half of the shim's 12 MiB budget): the C
scanner and encoder behind the json package, driven directly.
"""

from __future__ import annotations

import _json


class _Context:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.lower().replace("infinity", "inf"))


_scan = _json.make_scanner(_Context())
_encode = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",",
                             False, False, True)


def loads(text: str | bytes) -> object:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    text = text.strip()
    try:
        value, end = _scan(text, 0)
    except StopIteration as exc:
        raise ValueError(f"invalid JSON at offset {exc.value}") from None
    if end != len(text):
        raise ValueError(f"invalid JSON: extra data at offset {end}")
    return value


def dumps(value: object) -> str:
    return "".join(_encode(value, 0))
