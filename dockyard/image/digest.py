"""Content digests ("sha256:<hex>"): parsing, validation and hashing.

Only sha256 is produced; sha512 is accepted when parsing because the OCI
image spec registers it and a registry may hand one back. Anything else is
rejected up front so a bad digest never reaches a file path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from dockyard import errdefs

# Hex lengths of the algorithms we know; the spec requires lowercase hex.
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_ALGORITHM_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*$")
_HEX_RE = re.compile(r"^[a-f0-9]+$")

CANONICAL_ALGORITHM = "sha256"
_CHUNK = 1 << 20


class InvalidDigest(errdefs.InvalidArgument):
    """A string that is not a well-formed, supported content digest."""


@dataclass(frozen=True)
class Digest:
    """A parsed digest; str() gives back the "algorithm:hex" form."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def encoded(self) -> str:
        return self.hex

    def short(self, length: int = 12) -> str:
        """The first `length` hex characters, as Docker shows image IDs."""
        return self.hex[:length]


def parse_digest(value: str) -> Digest:
    """Parse and validate "sha256:<64 lowercase hex>" (or sha512)."""
    if not isinstance(value, str) or ":" not in value:
        raise InvalidDigest(
            f"invalid digest {value!r}: expected the form sha256:<64 lowercase hex characters>"
        )
    algorithm, _, hexpart = value.partition(":")
    if not _ALGORITHM_RE.match(algorithm):
        raise InvalidDigest(f"invalid digest {value!r}: malformed algorithm {algorithm!r}")
    expected_len = _HEX_LENGTHS.get(algorithm)
    if expected_len is None:
        raise InvalidDigest(
            f"unsupported digest algorithm {algorithm!r} in {value!r}: use sha256 (or sha512)"
        )
    if len(hexpart) != expected_len:
        raise InvalidDigest(
            f"invalid digest {value!r}: {algorithm} needs {expected_len} hex characters, "
            f"got {len(hexpart)}"
        )
    if not _HEX_RE.match(hexpart):
        raise InvalidDigest(
            f"invalid digest {value!r}: the encoded part must be lowercase hexadecimal"
        )
    return Digest(algorithm, hexpart)


def validate_digest(value: str) -> str:
    """Return value unchanged if it is a valid digest, else raise InvalidDigest."""
    parse_digest(value)
    return value


def is_digest(value: str) -> bool:
    try:
        parse_digest(value)
    except InvalidDigest:
        return False
    return True


def _new_hash(algorithm: str):
    if algorithm not in _HEX_LENGTHS:
        raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}: use sha256 (or sha512)")
    return hashlib.new(algorithm)


def digest_bytes(data: bytes, algorithm: str = CANONICAL_ALGORITHM) -> str:
    """The digest string of an in-memory blob."""
    h = _new_hash(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"


def digest_chunks(chunks: Iterable[bytes], algorithm: str = CANONICAL_ALGORITHM) -> str:
    d = Digester(algorithm)
    for chunk in chunks:
        d.update(chunk)
    return d.digest()


def digest_file(fileobj: BinaryIO, algorithm: str = CANONICAL_ALGORITHM) -> tuple[str, int]:
    """Hash a readable file object to its end; returns (digest, bytes read)."""
    d = Digester(algorithm)
    while True:
        chunk = fileobj.read(_CHUNK)
        if not chunk:
            break
        d.update(chunk)
    return d.digest(), d.size


class Digester:
    """Streaming hasher that also counts bytes, for verifying as data flows."""

    def __init__(self, algorithm: str = CANONICAL_ALGORITHM) -> None:
        self.algorithm = algorithm
        self._hash = _new_hash(algorithm)
        self.size = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class VerifyingReader:
    """Wraps a reader and raises DataLoss at EOF if size or digest differ.

    Used where bytes are consumed by something else (a tar extractor, a
    decompressor) and must still be proven to be the expected blob.
    """

    def __init__(self, reader: BinaryIO, expected: str, size: int | None = None) -> None:
        self._reader = reader
        self._expected = parse_digest(expected)
        self._size = size
        self._digester = Digester(self._expected.algorithm)
        self._verified = False

    def read(self, n: int = -1) -> bytes:
        data = self._reader.read(n)
        if data:
            self._digester.update(data)
            if self._size is not None and self._digester.size > self._size:
                raise errdefs.DataLoss(
                    f"content {self._expected} is longer than its declared size {self._size}"
                )
        elif not self._verified:
            self.verify()
        return data

    def verify(self) -> None:
        if self._size is not None and self._digester.size != self._size:
            raise errdefs.DataLoss(
                f"content {self._expected} is truncated: expected size {self._size}, "
                f"got {self._digester.size}"
            )
        actual = self._digester.digest()
        if actual != str(self._expected):
            raise errdefs.DataLoss(
                f"digest mismatch: expected {self._expected}, actual {actual}"
            )
        self._verified = True

    def close(self) -> None:
        self._reader.close()
