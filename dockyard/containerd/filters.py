"""containerd's filter syntax: field selectors joined by ',' (AND); several filter
strings are OR-ed, as in every containerd List/Subscribe request.

    selector  := fieldpath [ ("==" | "!=" | "~=") value ]
    fieldpath := field ("." field)*
    field     := identifier | "quoted"
    value     := bare-token | "quoted" | /regex/   (regex only after ~=)

A selector without an operator tests presence. Objects are matched through an
adaptor: a callable taking the field path (list of strings) and returning
(value, present). `message_adaptor` adapts any protobuf message the way containerd's
generated fieldpath code does: string fields by name, nested messages by path, and
map<string,string> fields keyed by the rest of the path joined with '.'.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dockyard import errdefs

Adaptor = Callable[[Sequence[str]], tuple[str, bool]]

_OPERATORS = ("==", "!=", "~=")
_FIELD_START = re.compile(r"[A-Za-z_]")
_FIELD_CHAR = re.compile(r"[A-Za-z0-9_\-]")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "/": "/", "0": "\0"}


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple[str, ...]
    operator: str | None
    value: str = ""
    regex: re.Pattern[str] | None = None

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.fieldpath)
        if self.operator is None:
            return present
        if self.operator == "==":
            return present and value == self.value
        if self.operator == "!=":
            return value != self.value
        return self.regex is not None and self.regex.search(value) is not None


@dataclass(frozen=True)
class Filter:
    """One filter string: all selectors must match."""

    selectors: tuple[Selector, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return all(s.match(adaptor) for s in self.selectors)


@dataclass(frozen=True)
class FilterSet:
    """Several filter strings: any may match; none at all matches everything."""

    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return not self.filters or any(f.match(adaptor) for f in self.filters)


def parse_all(texts: Iterable[str]) -> FilterSet:
    return FilterSet(tuple(parse(t) for t in texts if t.strip()))


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> errdefs.InvalidArgument:
        where = self.text if self.at_end() else \
            f"{self.text[:self.pos]} >|{self.text[self.pos:]}|<"
        return errdefs.InvalidArgument(f"filters: parse error: [{where}]: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos:self.pos + n]

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def quoted(self, quote: str) -> str:
        self.pos += 1  # opening quote
        out = []
        while True:
            if self.at_end():
                raise self.error("unterminated quoted string")
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch == "\\" and not self.at_end():
                nxt = self.text[self.pos]
                self.pos += 1
                if quote == "/" and nxt != "/":
                    out.append("\\" + nxt)  # keep regex escapes for re
                else:
                    out.append(_ESCAPES.get(nxt, nxt))
                continue
            out.append(ch)

    def field(self) -> str:
        self.skip_space()
        if self.peek() == '"':
            return self.quoted('"')
        start = self.pos
        if self.at_end() or not _FIELD_START.match(self.text[self.pos]):
            raise self.error("expected field or quoted")
        while not self.at_end() and _FIELD_CHAR.match(self.text[self.pos]):
            self.pos += 1
        return self.text[start:self.pos]

    def value(self, allow_regex: bool) -> str:
        self.skip_space()
        ch = self.peek()
        if ch == '"' or (allow_regex and ch == "/"):
            return self.quoted(ch)
        start = self.pos
        while not self.at_end() and self.text[self.pos] != "," \
                and not self.text[self.pos].isspace():
            self.pos += 1
        if start == self.pos:
            raise self.error("expected value or quoted")
        return self.text[start:self.pos]


def parse(text: str) -> Filter:
    """Parse one filter string; raises InvalidArgument with containerd's wording."""
    sc = _Scanner(text)
    selectors = []
    while True:
        path = [sc.field()]
        while sc.peek() == ".":
            sc.pos += 1
            path.append(sc.field())
        sc.skip_space()
        op = sc.peek(2)
        if op in _OPERATORS:
            sc.pos += 2
            value = sc.value(allow_regex=op == "~=")
            regex = None
            if op == "~=":
                try:
                    regex = re.compile(value)
                except re.error as exc:
                    raise sc.error(f"invalid regex {value!r}: {exc}") from exc
            selectors.append(Selector(tuple(path), op, value, regex))
        else:
            selectors.append(Selector(tuple(path), None))
        sc.skip_space()
        if sc.at_end():
            return Filter(tuple(selectors))
        if sc.peek() != ",":
            raise sc.error("expected a comma or end of input")
        sc.pos += 1


def map_lookup(mapping: dict[str, str], rest: Sequence[str]) -> tuple[str, bool]:
    """containerd joins the remaining path with '.' to look up a label key."""
    if not rest:
        return "", False
    key = ".".join(rest)
    if key in mapping:
        return mapping[key], True
    return "", False


def message_adaptor(message: object) -> Adaptor:
    """Adapt a protobuf message: strings by field name, string maps by joined key."""

    def adapt(path: Sequence[str]) -> tuple[str, bool]:
        current = message
        for i, name in enumerate(path):
            descriptor = getattr(current, "DESCRIPTOR", None)
            if descriptor is None:
                return "", False
            field = descriptor.fields_by_name.get(name)
            if field is None:
                return "", False
            value = getattr(current, name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                return map_lookup(dict(value), path[i + 1:])
            if field.message_type is not None:
                if i == len(path) - 1:
                    return "", current.HasField(name)
                current = value
                continue
            if i != len(path) - 1:
                return "", False
            if isinstance(value, str):
                return value, bool(value)  # containerd: present means non-empty
            if isinstance(value, bool):
                return ("true" if value else "false"), True
            return str(value), True
        return "", False

    return adapt
