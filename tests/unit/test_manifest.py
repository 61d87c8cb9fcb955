"""Manifests, indexes, configs and platform selection, checked against the OCI schemas."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from dockyard import errdefs
from dockyard.image import mediatypes as mt
from dockyard.image import platform as plat
from dockyard.image.core import Descriptor
from dockyard.image.digest import digest_bytes
from dockyard.image.manifest import (
    History,
    Index,
    InvalidManifest,
    Manifest,
    build_config,
    build_index,
    build_manifest,
    chain_ids,
    image_id,
    parse_config,
    parse_index,
    parse_manifest,
    parse_manifest_or_index,
)
from dockyard.image.platform import Platform, default_platform, parse_platform, select_manifest

SPECS = Path("/work/shared/specs/oci-image")


@pytest.fixture(scope="module")
def validators() -> dict[str, Draft4Validator]:
    if not SPECS.is_dir():
        pytest.skip(f"OCI image schemas not found at {SPECS}")
    resources = []
    for path in SPECS.glob("*.json"):
        contents = json.loads(path.read_text())
        resource = Resource.from_contents(contents, default_specification=DRAFT4)
        # Relative $refs resolve against each schema's own id, which sits
        # either at .../schema/ or .../schema/image/; register every file at both.
        for base in ("https://opencontainers.org/schema/",
                     "https://opencontainers.org/schema/image/"):
            resources.append((base + path.name, resource))
        if contents.get("id"):
            resources.append((contents["id"], resource))
    registry = Registry().with_resources(resources)

    def make(name: str) -> Draft4Validator:
        schema = json.loads((SPECS / name).read_text())
        return Draft4Validator(schema, registry=registry)

    return {
        "manifest": make("image-manifest-schema.json"),
        "index": make("image-index-schema.json"),
        "config": make("config-schema.json"),
    }


def _layer(data: bytes, media_type: str = mt.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, digest_bytes(data), len(data))


def _sample_config() -> bytes:
    return build_config(
        Platform("linux", "arm64", "v8"),
        [digest_bytes(b"l1"), digest_bytes(b"l2")],
        config={"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        history=[History(created="2024-01-01T00:00:00Z", created_by="ADD rootfs"),
                 History(created_by="CMD sh", empty_layer=True)],
        created="2024-01-01T00:00:00Z",
    ).raw


def test_built_documents_validate_against_oci_schemas(validators) -> None:
    config = parse_config(_sample_config())
    validators["config"].validate(json.loads(config.raw))
    manifest = build_manifest(config.descriptor(), [_layer(b"l1"), _layer(b"l2")],
                              annotations={"org.opencontainers.image.title": "x"})
    validators["manifest"].validate(json.loads(manifest.raw))
    index = build_index([manifest.descriptor(Platform("linux", "arm64", "v8"))])
    validators["index"].validate(json.loads(index.raw))
    # The schemas really bite: a bad digest is refused by them too.
    bad = json.loads(manifest.raw)
    bad["config"]["digest"] = "nope"
    with pytest.raises(Exception, match="does not match"):
        validators["manifest"].validate(bad)


def test_raw_bytes_and_digest_are_preserved() -> None:
    cfg = Descriptor(mt.OCI_CONFIG, digest_bytes(b"{}"), 2)
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": cfg.to_json(),
           "layers": [_layer(b"a").to_json()]}
    pretty = json.dumps(doc, indent=3).encode()
    m = parse_manifest(pretty)
    assert m.raw == pretty
    assert m.digest == "sha256:" + hashlib.sha256(pretty).hexdigest()
    assert m.size == len(pretty)
    assert m.config == cfg and m.layers == (_layer(b"a"),)
    d = m.descriptor()
    assert (d.media_type, d.digest, d.size) == (mt.OCI_MANIFEST, m.digest, len(pretty))


def test_docker_schema2_and_list() -> None:
    doc = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
           "config": {"mediaType": mt.DOCKER_CONFIG, "size": 2, "digest": digest_bytes(b"{}")},
           "layers": [_layer(b"x", mt.DOCKER_LAYER_GZIP).to_json()]}
    m = parse_manifest_or_index(json.dumps(doc).encode())
    assert isinstance(m, Manifest) and m.media_type == mt.DOCKER_MANIFEST
    lst = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": mt.DOCKER_MANIFEST, "size": 10, "digest": digest_bytes(b"m"),
         "platform": {"architecture": "amd64", "os": "linux"}}]}
    idx = parse_manifest_or_index(json.dumps(lst).encode())
    assert isinstance(idx, Index) and idx.manifests[0].platform["architecture"] == "amd64"


def test_media_type_detection() -> None:
    cfg = {"mediaType": mt.OCI_CONFIG, "size": 2, "digest": digest_bytes(b"{}")}
    no_type = json.dumps({"schemaVersion": 2, "config": cfg, "layers": []}).encode()
    assert parse_manifest(no_type).media_type == mt.OCI_MANIFEST
    assert parse_manifest(no_type, mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST
    idx = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert parse_index(idx, "application/json").media_type == mt.OCI_INDEX
    with pytest.raises(InvalidManifest, match="expected an image manifest"):
        parse_manifest(idx)
    # A document claiming to be an index must not carry layers (and vice versa).
    mixed = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [],
                        "layers": []}).encode()
    with pytest.raises(InvalidManifest, match="must not have"):
        parse_manifest_or_index(mixed)
    with pytest.raises(errdefs.NotImplementedFeature, match="unsupported manifest media type"):
        parse_manifest_or_index(json.dumps({"schemaVersion": 2, "mediaType": "x/y"}).encode())


@pytest.mark.parametrize(
    "raw,bad",
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (json.dumps({"schemaVersion": 3, "config": {}, "layers": []}).encode(), None),
        (json.dumps({"schemaVersion": 2, "layers": []}).encode(), "config"),
        (json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:x", "size": 1},
                     "layers": []}).encode(), "manifest config"),
        (json.dumps({"schemaVersion": 2, "config": {"digest": digest_bytes(b""), "size": -1},
                     "layers": []}).encode(), "negative"),
    ],
)
def test_invalid_manifests(raw: bytes, bad: str | None) -> None:
    with pytest.raises(InvalidManifest) as exc:
        parse_manifest(raw)
    if bad:
        assert bad in str(exc.value)


def test_schema1_is_refused() -> None:
    s1 = json.dumps({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}).encode()
    for header in (None, mt.DOCKER_SCHEMA1_SIGNED_MANIFEST):
        with pytest.raises(mt.Schema1Unsupported) as exc:
            parse_manifest_or_index(s1, header)
        assert str(exc.value).startswith(
            "unsupported: Docker Image manifest v2 schema 1 is deprecated")
    with pytest.raises(mt.Schema1Unsupported):
        mt.reject_schema1(mt.DOCKER_SCHEMA1_MANIFEST + "; charset=utf-8")


def test_mediatype_helpers() -> None:
    assert mt.layer_compression(mt.OCI_LAYER_ZSTD) == "zstd"
    assert mt.layer_compression(mt.DOCKER_LAYER_GZIP) == "gzip"
    assert mt.layer_compression(mt.OCI_LAYER) is None
    assert mt.is_foreign_layer(mt.DOCKER_LAYER_FOREIGN)
    assert mt.is_index(mt.DOCKER_MANIFEST_LIST) and not mt.is_index(mt.OCI_MANIFEST)
    with pytest.raises(errdefs.NotImplementedFeature):
        mt.layer_compression("application/x-foo")


def test_config_fields_and_chain_ids() -> None:
    cfg = parse_config(_sample_config())
    assert cfg.platform == Platform("linux", "arm64", "v8")
    assert cfg.config["Cmd"] == ["sh"]
    assert cfg.history[1].empty_layer and cfg.history[0].created_by == "ADD rootfs"
    assert cfg.id == image_id(cfg.raw) == digest_bytes(cfg.raw)
    d1, d2, d3 = (digest_bytes(x) for x in (b"l1", b"l2", b"l3"))
    c2 = "sha256:" + hashlib.sha256(f"{d1} {d2}".encode()).hexdigest()
    c3 = "sha256:" + hashlib.sha256(f"{c2} {d3}".encode()).hexdigest()
    assert chain_ids([d1, d2, d3]) == [d1, c2, c3]
    assert cfg.chain_ids() == [d1, c2]
    assert chain_ids([]) == []
    with pytest.raises(InvalidManifest, match="diff_ids"):
        parse_config(b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}')


# ---------------------------------------------------------------- platforms


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/aarch64", Platform("linux", "arm64", "v8")),
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/arm/6", Platform("linux", "arm", "v6")),
        ("linux/i386", Platform("linux", "386")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("arm64", Platform("linux", "arm64", "v8")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_parse_platform(spec: str, expected: Platform) -> None:
    assert parse_platform(spec) == expected


def test_parse_platform_single_os_uses_host_arch() -> None:
    host = default_platform()
    assert parse_platform("linux") == host
    assert host.os == "linux" and host.architecture


@pytest.mark.parametrize("spec", ["", "linux/", "/amd64", "linux/amd64/v8/x", "plan10/amd64",
                                  "linux/z80", "bogus"])
def test_parse_platform_invalid(spec: str) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="invalid platform"):
        parse_platform(spec)


def test_default_platform_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    for machine, expected in [("x86_64", "linux/amd64"), ("aarch64", "linux/arm64/v8"),
                              ("armv7l", "linux/arm/v7"), ("i686", "linux/386")]:
        monkeypatch.setattr(plat._host, "machine", lambda m=machine: m)
        assert str(default_platform()) == expected


def _entry(name: str, os_: str, arch: str, variant: str = "") -> Descriptor:
    p = {"os": os_, "architecture": arch}
    if variant:
        p["variant"] = variant
    return Descriptor(mt.OCI_MANIFEST, digest_bytes(name.encode()), 1,
                      {"name": name}, p)


def _pick(entries: list[Descriptor], spec: str) -> str:
    return select_manifest(entries, parse_platform(spec)).annotations["name"]


def test_select_manifest() -> None:
    entries = [
        _entry("amd64", "linux", "amd64"),
        _entry("arm-v6", "linux", "arm", "v6"),
        _entry("arm-v7", "linux", "arm", "v7"),
        _entry("arm64", "linux", "arm64"),  # no variant: means v8
        _entry("win", "windows", "amd64"),
        _entry("attest", "unknown", "unknown"),
    ]
    assert _pick(entries, "linux/amd64") == "amd64"
    assert _pick(entries, "linux/arm64/v8") == "arm64"
    assert _pick(entries, "linux/arm/v7") == "arm-v7"
    assert _pick(entries, "linux/arm/v6") == "arm-v6"
    assert _pick(entries, "windows/amd64") == "win"
    # arm64 falls back to 32-bit arm, best variant first; amd64/v3 to plain amd64.
    assert _pick(entries[:3], "linux/arm64") == "arm-v7"
    assert _pick(entries, "linux/amd64/v3") == "amd64"
    # An Index object works too, and first entry wins a tie.
    twin = build_index([_entry("first", "linux", "amd64"), _entry("second", "linux", "amd64")])
    assert select_manifest(twin, "linux/amd64").annotations["name"] == "first"
    with pytest.raises(errdefs.NotFound) as exc:
        select_manifest([_entry("arm64", "linux", "arm64")], "linux/amd64")
    assert str(exc.value) == "no matching manifest for linux/amd64 in the manifest list entries"
    with pytest.raises(errdefs.NotFound, match="linux/arm64/v8 in the manifest list"):
        select_manifest(entries[:1], "linux/arm64")
