"""Media types of Docker and OCI images, and questions asked about them."""

from __future__ import annotations

from dockyard import errdefs

# Docker image manifest v2, schema 2
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # uncompressed, rarely seen
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json"

# Docker schema 1: refused (signed JSON, no content-addressed config)
DOCKER_SCHEMA1_MANIFEST = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED_MANIFEST = "application/vnd.docker.distribution.manifest.v1+prettyjws"

# OCI image spec v1
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1_MANIFEST, DOCKER_SCHEMA1_SIGNED_MANIFEST})

_LAYER_COMPRESSION = {
    DOCKER_LAYER: None,
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN: "gzip",
    OCI_LAYER: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDISTRIBUTABLE: None,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
}
LAYER_TYPES = frozenset(_LAYER_COMPRESSION)
# Layers a registry may not hold; their bytes come from descriptor urls.
FOREIGN_LAYER_TYPES = frozenset({
    DOCKER_LAYER_FOREIGN,
    OCI_LAYER_NONDISTRIBUTABLE,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
})

# Accept header for manifest GETs: everything we can parse, best first.
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

SCHEMA1_ERROR = (
    "unsupported: Docker Image manifest v2 schema 1 is deprecated; "
    "rebuild and push the image with a current Docker or as an OCI image"
)


class Schema1Unsupported(errdefs.NotImplementedFeature):
    """A Docker v2 schema 1 manifest, which dockyard refuses (as Docker now does)."""


def _base(media_type: str) -> str:
    # Content-Type headers may carry parameters ("; charset=utf-8").
    return media_type.split(";", 1)[0].strip()


def is_index(media_type: str) -> bool:
    return _base(media_type) in INDEX_TYPES


def is_manifest(media_type: str) -> bool:
    return _base(media_type) in MANIFEST_TYPES


def is_config(media_type: str) -> bool:
    return _base(media_type) in CONFIG_TYPES


def is_layer(media_type: str) -> bool:
    return _base(media_type) in LAYER_TYPES


def is_foreign_layer(media_type: str) -> bool:
    return _base(media_type) in FOREIGN_LAYER_TYPES


def is_schema1(media_type: str) -> bool:
    return _base(media_type) in SCHEMA1_TYPES


def is_docker(media_type: str) -> bool:
    return _base(media_type).startswith("application/vnd.docker.")


def layer_compression(media_type: str) -> str | None:
    """"gzip", "zstd" or None (plain tar) for a layer media type."""
    try:
        return _LAYER_COMPRESSION[_base(media_type)]
    except KeyError as exc:
        raise errdefs.NotImplementedFeature(
            f"unsupported layer media type {media_type!r}: expected a Docker or OCI tar layer"
        ) from exc


def reject_schema1(media_type: str) -> None:
    if is_schema1(media_type):
        raise Schema1Unsupported(SCHEMA1_ERROR)
