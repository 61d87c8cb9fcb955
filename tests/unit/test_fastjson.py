"""dockyard.runtime.fastjson gives json.loads / json.dumps results and errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.runtime import fastjson, specgen

SPECS = Path("/work/shared/specs")
if not SPECS.is_dir():
    SPECS = Path(__file__).resolve().parents[3] / "shared/specs"


def spec_documents() -> list[tuple[str, str]]:
    if not SPECS.is_dir():
        return []
    return [(str(p.relative_to(SPECS)), p.read_text())
            for p in sorted(SPECS.rglob("*.json"))]


VALUES = [
    None, True, False, 0, -1, 1 << 70, -(1 << 64), 1.5, -0.0, 1e300, 5e-324, "", "plain",
    "quote \" backslash \\ slash / controls \b\f\n\r\t \x00 \x1f",
    "unicode: é ß 中文 😀 \u2028 \ufeff", [], {}, [[]], [{}],
    {"a": [1, 2, {"b": None}], "c": {"d": {"e": []}}, "é": "ü", "": ""},
    ("tuple", 1), [1, "two", 3.0, [4, [5, [6]]]],
    specgen.default_spec(args=["sh", "-c", "echo hi"]),
    {"ociVersion": "1.0.2", "id": "c1", "pid": 42, "status": "running",
     "bundle": "/b", "rootfs": "/b/rootfs", "created": "2024-01-01T00:00:00Z",
     "annotations": {"org.example/key": "välue"}, "owner": "root"},
]

TEXTS = [
    "0", " 1 ", "\t\n\r [1,2] \n", '{"a":1,"a":2}', '"\\u00e9\\ud83d\\ude00"', "-12.5e+3",
    "1E400", "-1E400", "NaN", "Infinity", "-Infinity", '[1.0, 1e-7, 123456789012345678901234567890]',
    '{"nested": {"deep": [true, false, null]}}', '"\\"\\\\\\/\\b\\f\\n\\r\\t"', '"é"',
    '"\\ud800"', "[]", "{}", '{"k": "\u2028"}',
]

BAD_TEXTS = [
    "", "   ", "[", "]", "{", '{"a" 1}', '{"a": 1,}', "[1,]", "[1 2]", "1 2", "tru", "nul",
    '"unterminated', '"bad \\x escape"', '"raw \n control"', "01", "-", "{'a': 1}",
    "\ufeff{}", '{"a": 1} x', "[1, 2", '{"a": [1, {"b": }]}', "1.", ".5", '"\\ud83d\\u"',
]


def same_json(a, b) -> bool:
    """Equality that also holds for NaN and tells -0.0 from 0.0 and 1 from 1.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or repr(a) == repr(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_json(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_dumps_and_round_trip_match_json(value) -> None:
    assert fastjson.dumps(value) == json.dumps(value)
    for indent in (0, 2, 4):
        assert fastjson.dumps(value, indent=indent) == json.dumps(value, indent=indent)
    text = json.dumps(value)
    assert same_json(fastjson.loads(text), json.loads(text))
    assert same_json(fastjson.loads(text.encode()), json.loads(text.encode()))


@pytest.mark.parametrize("text", TEXTS)
def test_loads_matches_json(text: str) -> None:
    assert same_json(fastjson.loads(text), json.loads(text))
    assert same_json(fastjson.loads(text.encode("utf-8", "surrogatepass")),
                     json.loads(text.encode("utf-8", "surrogatepass")))
    assert same_json(fastjson.loads(bytearray(text.encode("utf-8", "surrogatepass"))),
                     json.loads(bytearray(text.encode("utf-8", "surrogatepass"))))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be",
                                      "utf-32", "utf-32-le", "utf-32-be"])
def test_loads_other_encodings_as_json_does(encoding: str) -> None:
    data = json.dumps({"key": ["välue", 1, None]}).encode(encoding)
    assert fastjson.loads(data) == json.loads(data) == {"key": ["välue", 1, None]}


@pytest.mark.parametrize("name,text", spec_documents() or [pytest.param(
    "", "", marks=pytest.mark.skip(reason="shared/specs is not beside the checkout"))])
def test_spec_documents_match_json(name: str, text: str) -> None:
    expected = json.loads(text)
    assert fastjson.loads(text) == expected
    assert fastjson.loads(text.encode()) == expected
    assert fastjson.dumps(expected) == json.dumps(expected)
    assert fastjson.dumps(expected, indent=2) == json.dumps(expected, indent=2)


@pytest.mark.parametrize("text", BAD_TEXTS)
def test_errors_are_jsons(text: str) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(ValueError) as got:
        fastjson.loads(text)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)
    assert (got.value.pos, got.value.lineno, got.value.colno) == (
        expected.value.pos, expected.value.lineno, expected.value.colno)


def test_invalid_utf8_and_wrong_types_raise_like_json() -> None:
    for bad in (b'"\xff"', b"\x80", 3, None, memoryview(b"{}")):
        with pytest.raises((TypeError, ValueError)) as expected:
            json.loads(bad)
        with pytest.raises((TypeError, ValueError)) as got:
            fastjson.loads(bad)
        assert type(got.value) is type(expected.value)
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("value", [object(), {1: "int key"}, {(1, 2): "tuple key"},
                                   {"set": {1}}, b"bytes"])
def test_dumps_unsupported_is_jsons(value) -> None:
    for indent in (None, 2):
        try:
            expected = json.dumps(value, indent=indent)
        except TypeError as exc:
            with pytest.raises(TypeError, match=str(exc).split(" is ")[0]):
                fastjson.dumps(value, indent=indent)
        else:
            assert fastjson.dumps(value, indent=indent) == expected


def test_dumps_cycle_raises_like_json() -> None:
    loop: list = []
    loop.append(loop)
    for indent in (None, 2):
        with pytest.raises(ValueError, match="Circular reference detected"):
            fastjson.dumps(loop, indent=indent)


def test_import_does_not_pull_json_or_re() -> None:
    code = ("import sys, dockyard.runtime.fastjson as f\n"
            "f.dumps(f.loads(b'{\"a\": [1, 2.5, \"\\\\u00e9\"]}'), indent=2)\n"
            "print(sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")
    assert run_fresh(code) == "[]"


@pytest.mark.parametrize("text", ['{"a": }', '"bad \\x"', "[1, 2", "{not json", "1 2", ""])
def test_errors_are_jsons_before_json_is_imported(text: str) -> None:
    # _json finds JSONDecodeError only through an already imported json.decoder.
    code = ("import dockyard.runtime.fastjson as f\n"
            f"try:\n    f.loads({text!r})\n"
            "except ValueError as e:\n    print(type(e).__name__, e.pos, e)\n")
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    exc = expected.value
    assert run_fresh(code) == f"JSONDecodeError {exc.pos} {exc}"


def run_fresh(code: str) -> str:
    """Run code in a new interpreter without site (so nothing has imported json)."""
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    return out.stdout.strip()
