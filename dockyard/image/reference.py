"""Docker image references: parsing and normalisation.

Follows the grammar and the "normalized named" rules of Docker's
distribution/reference so that every name a user types resolves to the
same repository Docker would use:

    alpine                  -> docker.io/library/alpine:latest
    user/repo               -> docker.io/user/repo:latest
    localhost:5000/a/b:t    -> localhost:5000/a/b:t
    name@sha256:<hex>       -> docker.io/library/name@sha256:<hex>

Error texts match Docker's, because clients and scripts compare them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from dockyard import errdefs
from dockyard.image.digest import InvalidDigest, parse_digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = rf"(?:{_DOMAIN}/)?{_REMOTE_NAME}"

_REFERENCE_RE = re.compile(
    rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$", re.ASCII
)
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$", re.ASCII)
_REMOTE_NAME_RE = re.compile(rf"^{_REMOTE_NAME}$", re.ASCII)
_TAG_RE = re.compile(rf"^{_TAG}$", re.ASCII)
_IDENTIFIER_RE = re.compile(r"^[a-f0-9]{64}$")

FORMAT_ERROR = "invalid reference format"


class InvalidReference(errdefs.InvalidArgument):
    """A string that is not a valid image reference (Docker's wording)."""


@dataclass(frozen=True)
class Reference:
    """A normalised reference: domain + path, with an optional tag and digest."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified repository name, e.g. docker.io/library/alpine."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The short name Docker shows: "alpine", "user/repo", "localhost:5000/a/b"."""
        if self.domain == DEFAULT_DOMAIN:
            if self.path.startswith(OFFICIAL_REPO_PREFIX):
                rest = self.path[len(OFFICIAL_REPO_PREFIX):]
                if "/" not in rest:
                    return rest
            return self.path
        return self.name

    def __str__(self) -> str:
        return self.name + self._suffix()

    def familiar_string(self) -> str:
        return self.familiar_name + self._suffix()

    def _suffix(self) -> str:
        out = ""
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    @property
    def is_name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.match(tag):
            raise InvalidReference(f"invalid tag format: {tag!r}")
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        try:
            parse_digest(digest)
        except InvalidDigest as exc:
            raise InvalidReference(f"invalid digest format: {exc}") from exc
        return replace(self, digest=digest)

    def without_tag(self) -> Reference:
        return replace(self, tag=None)

    def without_digest(self) -> Reference:
        return replace(self, digest=None)

    def name_only(self) -> Reference:
        return replace(self, tag=None, digest=None)


def split_docker_domain(name: str) -> tuple[str, str]:
    """Split a name into (domain, remainder) the way Docker guesses a registry.

    The first component is a registry only if it looks like a host: it has a
    '.' or ':', is 'localhost', or has uppercase letters (which a repository
    path never may).
    """
    first, sep, rest = name.partition("/")
    if not sep or (
        "." not in first and ":" not in first and first != "localhost"
        and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse(s: str) -> Reference:
    """Parse a fully qualified reference without applying Docker defaults.

    The name must already carry a domain (as produced by normalisation);
    use parse_normalized_named for what users type.
    """
    m = _REFERENCE_RE.match(s)
    if m is None:
        if s == "":
            raise InvalidReference(
                f"{FORMAT_ERROR}: repository name must have at least one component"
            )
        if _REFERENCE_RE.match(s.lower()):
            raise InvalidReference(f"{FORMAT_ERROR}: repository name must be lowercase")
        raise InvalidReference(FORMAT_ERROR)
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"{FORMAT_ERROR}: repository name must not be more than "
            f"{NAME_TOTAL_LENGTH_MAX} characters"
        )
    if digest is not None:
        try:
            parse_digest(digest)
        except InvalidDigest as exc:
            raise InvalidReference(f"{FORMAT_ERROR}: {exc}") from exc
    domain, sep, path = name.partition("/")
    if not sep or not _DOMAIN_RE.match(domain) or "/" not in name:
        # Docker would accept "a_b.c/d" with an empty domain; nothing can
        # pull such a name, so refuse it here.
        raise InvalidReference(FORMAT_ERROR)
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def parse_normalized_named(s: str) -> Reference:
    """Parse what a user typed and fill in Docker's registry defaults.

    No tag is added; see with_default_tag / parse_reference.
    """
    if not isinstance(s, str):
        raise InvalidReference(FORMAT_ERROR)
    if _IDENTIFIER_RE.match(s):
        raise InvalidReference(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = split_docker_domain(s)
    remote_name = remainder.split(":", 1)[0]
    if remote_name.lower() != remote_name:
        raise InvalidReference(
            f"{FORMAT_ERROR}: repository name ({remote_name}) must be lowercase"
        )
    return parse(f"{domain}/{remainder}")


def with_default_tag(ref: Reference) -> Reference:
    """Add ":latest" when the reference has neither tag nor digest."""
    if ref.is_name_only:
        return replace(ref, tag=DEFAULT_TAG)
    return ref


def parse_reference(s: str) -> Reference:
    """Parse and normalise, adding ":latest" when no tag or digest is given."""
    return with_default_tag(parse_normalized_named(s))


def parse_repository(s: str) -> Reference:
    """Parse a repository name that must carry neither tag nor digest."""
    ref = parse_normalized_named(s)
    if not ref.is_name_only:
        raise InvalidReference(
            f"{FORMAT_ERROR}: {s!r} must be a repository name without a tag or digest"
        )
    return ref


def is_valid_tag(tag: str) -> bool:
    return bool(_TAG_RE.match(tag))


def is_image_id(s: str) -> bool:
    """True for a full 64-hex image ID with or without the "sha256:" prefix."""
    return bool(_IDENTIFIER_RE.match(s.removeprefix("sha256:")))
