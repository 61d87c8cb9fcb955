"""Reference parsing and normalisation, checked against Docker's behaviour."""

from __future__ import annotations

import pytest

from dockyard import errdefs
from dockyard.image.digest import (
    Digester,
    InvalidDigest,
    VerifyingReader,
    digest_bytes,
    parse_digest,
)
from dockyard.image.reference import (
    InvalidReference,
    Reference,
    is_image_id,
    parse_normalized_named,
    parse_reference,
    with_default_tag,
)

HEX = "a" * 64
DGST = f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("text", "canonical", "familiar"),
    [
        ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("alpine:3.19", "docker.io/library/alpine:3.19", "alpine:3.19"),
        ("library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("docker.io/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("index.docker.io/library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
        ("user/repo", "docker.io/user/repo:latest", "user/repo:latest"),
        ("docker.io/user/repo:t", "docker.io/user/repo:t", "user/repo:t"),
        ("localhost/foo", "localhost/foo:latest", "localhost/foo:latest"),
        ("localhost:5000/a/b:t", "localhost:5000/a/b:t", "localhost:5000/a/b:t"),
        ("quay.io/a/b/c", "quay.io/a/b/c:latest", "quay.io/a/b/c:latest"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
        ("[::1]:5000/x:y", "[::1]:5000/x:y", "[::1]:5000/x:y"),
        (f"alpine@{DGST}", f"docker.io/library/alpine@{DGST}", f"alpine@{DGST}"),
        (f"alpine:3@{DGST}", f"docker.io/library/alpine:3@{DGST}", f"alpine:3@{DGST}"),
        ("ab-c__d---e/f.g_h:T_a.g-1", "docker.io/ab-c__d---e/f.g_h:T_a.g-1", "ab-c__d---e/f.g_h:T_a.g-1"),
        ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ],
)
def test_normalise(text: str, canonical: str, familiar: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == canonical
    assert ref.familiar_string() == familiar
    # Round trip: the canonical string parses to the same reference.
    assert parse_reference(canonical) == ref
    assert parse_reference(familiar) == ref


def test_fields() -> None:
    ref = parse_reference(f"localhost:5000/a/b:t@{DGST}")
    assert ref == Reference("localhost:5000", "a/b", "t", DGST)
    assert ref.name == "localhost:5000/a/b"
    assert ref.familiar_name == "localhost:5000/a/b"
    assert parse_reference("alpine").familiar_name == "alpine"
    assert parse_reference("user/repo").familiar_name == "user/repo"
    named = parse_normalized_named("alpine")
    assert named.tag is None and str(named) == "docker.io/library/alpine"
    assert with_default_tag(named).tag == "latest"
    assert parse_reference(f"alpine@{DGST}").tag is None  # digest: no default tag
    assert ref.without_tag().familiar_string() == f"localhost:5000/a/b@{DGST}"
    assert ref.name_only().is_name_only


def test_domain_detection() -> None:
    assert parse_reference("foo/bar").domain == "docker.io"
    assert parse_reference("foo.com/bar").domain == "foo.com"
    assert parse_reference("foo:1/bar").domain == "foo:1"
    assert parse_reference("localhost/bar").domain == "localhost"
    # An uppercase first component cannot be a repository path, so it is a host.
    assert parse_reference("Foo/bar").domain == "Foo"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Alpine", "invalid reference format: repository name (library/Alpine) must be lowercase"),
        ("user/Repo:t", "invalid reference format: repository name (user/Repo) must be lowercase"),
        ("localhost:5000/A", "invalid reference format: repository name (A) must be lowercase"),
        ("", "invalid reference format"),
        ("a:b:c", "invalid reference format"),
        ("alpine:", "invalid reference format"),
        ("-alpine", "invalid reference format"),
        ("alpine-", "invalid reference format"),
        ("a//b", "invalid reference format"),
        ("alpine:" + "t" * 129, "invalid reference format"),
        ("alpine:.x", "invalid reference format"),
        ("alpine@sha256:abc", "invalid reference format"),
        ("a b", "invalid reference format"),
        ("a_b.c/d", "invalid reference format"),
        ("alpine@md5:" + "a" * 32, "invalid reference format"),
        ("x/" + "a" * 255, "invalid reference format"),
        (HEX, f"invalid repository name ({HEX}), cannot specify 64-byte hexadecimal strings"),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        parse_reference(text)
    assert str(exc.value).startswith(message)
    assert isinstance(exc.value, errdefs.InvalidArgument)


def test_exact_docker_messages() -> None:
    with pytest.raises(InvalidReference) as exc:
        parse_reference("a:b:c")
    assert str(exc.value) == "invalid reference format"
    with pytest.raises(InvalidReference) as exc:
        parse_reference("Alpine")
    assert str(exc.value) == (
        "invalid reference format: repository name (library/Alpine) must be lowercase"
    )


def test_limits() -> None:
    assert parse_reference("alpine:" + "t" * 128).tag == "t" * 128
    name = "localhost/" + "a" * 245  # 255 characters in total
    assert parse_reference(name).name == name
    with pytest.raises(InvalidReference, match="255"):
        parse_reference(name + "a")


def test_image_id() -> None:
    assert is_image_id(HEX) and is_image_id(DGST)
    assert not is_image_id("abc")


def test_digest_parsing() -> None:
    d = parse_digest(DGST)
    assert d.algorithm == "sha256" and d.hex == HEX and str(d) == DGST
    assert parse_digest("sha512:" + "b" * 128).algorithm == "sha512"
    for bad, fragment in [
        ("sha256:" + "A" * 64, "lowercase"),
        ("sha256:abc", "64 hex"),
        ("md5:" + "a" * 32, "unsupported digest algorithm"),
        ("nocolon", "expected the form"),
        ("sha256:" + "g" * 64, "lowercase hexadecimal"),
    ]:
        with pytest.raises(InvalidDigest, match=fragment):
            parse_digest(bad)
    assert digest_bytes(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    dg = Digester()
    dg.update(b"ab")
    dg.update(b"c")
    assert dg.digest() == digest_bytes(b"abc") and dg.size == 3


def test_verifying_reader() -> None:
    import io

    good = VerifyingReader(io.BytesIO(b"abc"), digest_bytes(b"abc"), 3)
    assert good.read() == b"abc" and good.read() == b""
    bad = VerifyingReader(io.BytesIO(b"abd"), digest_bytes(b"abc"), 3)
    bad.read()
    with pytest.raises(errdefs.DataLoss, match="digest mismatch"):
        bad.read()
