"""docker save/load and OCI layouts: round trips, skopeo/umoci interop,
and hostile archives rejected with nothing registered."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from dockyard import errdefs
from dockyard.image.archive import (
    load_archive,
    load_oci_layout,
    save_docker_archive,
    save_oci_layout,
)
from dockyard.image.content import LocalContentStore
from dockyard.image.images import ImageStore
from dockyard.image.snapshots import NativeSnapshotter
from dockyard.image.snapshots.mount import mounted
from dockyard.image.testimages import build_busybox_image
from dockyard.image.unpack import image_layers, prepare_rootfs

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

if not os.path.exists("/bin/busybox"):
    pytest.skip("busybox-static is not installed", allow_module_level=True)

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")


class Stores:
    def __init__(self, root) -> None:
        self.content = LocalContentStore(str(root / "content"))
        self.images = ImageStore(root / "images.db")

    def close(self) -> None:
        self.images.close()
        self.content.close()


@pytest.fixture
def src(tmp_path):
    s = Stores(tmp_path / "src")
    build_busybox_image(s.content, s.images)
    yield s
    s.close()


@pytest.fixture
def dst(tmp_path):
    s = Stores(tmp_path / "dst")
    yield s
    s.close()


def _config_digest(stores: Stores, name: str) -> str:
    return image_layers(stores.content, stores.images.get(name).target)[1].digest


def test_docker_save_load_round_trip(src, dst, tmp_path) -> None:
    src.images.put(src.images.get("busybox").__class__(
        "localhost:5000/team/bb:v1", src.images.get("busybox").target))
    archive = tmp_path / "save.tar"
    with open(archive, "wb") as f:
        save_docker_archive(src.content, src.images, ["busybox", "localhost:5000/team/bb:v1"], f)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))
        index = json.load(tar.extractfile("index.json"))
    assert {"oci-layout", "index.json", "manifest.json", "repositories"} <= names
    assert len(manifest) == 1  # one image, two tags
    assert manifest[0]["RepoTags"] == ["busybox:latest", "localhost:5000/team/bb:v1"]
    assert all(p.startswith("blobs/sha256/") and p in names
               for p in [manifest[0]["Config"], *manifest[0]["Layers"]])
    assert {m["annotations"]["org.opencontainers.image.ref.name"]
            for m in index["manifests"]} == {"latest", "v1"}

    snapshotter = NativeSnapshotter(str(tmp_path / "native"))
    try:
        with open(archive, "rb") as f:
            loaded = load_archive(dst.content, dst.images, f, snapshotter=snapshotter,
                                  snapshotter_name="native")
        assert sorted(n for item in loaded for n in item.names) == [
            "docker.io/library/busybox:latest", "localhost:5000/team/bb:v1"]
        assert _config_digest(dst, "busybox") == _config_digest(src, "busybox")
        mounts = prepare_rootfs(snapshotter, dst.images.get("busybox"), "c1",
                                content=dst.content, snapshotter_name="native")
        with mounted(mounts) as root:
            assert os.readlink(os.path.join(root, "bin/ls")) == "/bin/busybox"
        snapshotter.remove("c1")
    finally:
        snapshotter.close()


def test_save_is_deterministic(src, tmp_path) -> None:
    a, b = io.BytesIO(), io.BytesIO()
    save_docker_archive(src.content, src.images, ["busybox"], a)
    save_docker_archive(src.content, src.images, ["busybox"], b)
    assert a.getvalue() == b.getvalue()


def test_oci_layout_round_trip_dir_and_tar(src, dst, tmp_path) -> None:
    layout = str(tmp_path / "layout")
    save_oci_layout(src.content, src.images, ["busybox"], layout)
    with open(os.path.join(layout, "oci-layout")) as f:
        assert json.load(f) == {"imageLayoutVersion": "1.0.0"}
    loaded = load_oci_layout(dst.content, dst.images, layout)
    assert loaded[0].names == ("docker.io/library/busybox:latest",)
    # An OCI layout keeps the stored manifest: the digest is preserved.
    assert dst.images.get("busybox").target.digest == src.images.get("busybox").target.digest

    buf = io.BytesIO()
    save_oci_layout(src.content, src.images, ["busybox"], buf)
    buf.seek(0)
    other = Stores(tmp_path / "other")
    try:
        loaded = load_archive(other.content, other.images, buf)
        assert other.images.get("busybox").target == loaded[0].target
    finally:
        other.close()


def test_oci_tag_only_names_use_base_name(src, dst, tmp_path) -> None:
    layout = str(tmp_path / "layout")
    save_oci_layout(src.content, src.images, ["busybox"], layout)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    for m in index["manifests"]:
        del m["annotations"]["io.containerd.image.name"]
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    assert load_oci_layout(dst.content, dst.images, layout)[0].names == ()
    loaded = load_oci_layout(dst.content, dst.images, layout, base_name="example.com/bb")
    assert loaded[0].names == ("example.com/bb:latest",)


@needs_skopeo
def test_skopeo_archive_loads_and_reads_ours(src, dst, tmp_path) -> None:
    layout = str(tmp_path / "layout")
    save_oci_layout(src.content, src.images, ["busybox"], layout)
    theirs = tmp_path / "skopeo.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:latest",
                    f"docker-archive:{theirs}:example.com/sk/busybox:v2"],
                   check=True, capture_output=True)
    with open(theirs, "rb") as f:
        loaded = load_archive(dst.content, dst.images, f)
    assert loaded[0].names == ("example.com/sk/busybox:v2",)
    assert _config_digest(dst, "example.com/sk/busybox:v2") == _config_digest(src, "busybox")

    ours = tmp_path / "ours.tar"
    with open(ours, "wb") as f:
        save_docker_archive(src.content, src.images, ["busybox"], f)
    out = subprocess.run(["skopeo", "inspect", f"docker-archive:{ours}"], check=True,
                         capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["Os"] == "linux" and len(info["Layers"]) == 1
    # skopeo reads our OCI layout too, by tag.
    subprocess.run(["skopeo", "inspect", f"oci:{layout}:latest"], check=True,
                   capture_output=True)


@needs_umoci
def test_umoci_unpacks_our_oci_layout(src, tmp_path) -> None:
    layout = str(tmp_path / "layout")
    save_oci_layout(src.content, src.images, ["busybox"], layout)
    bundle = str(tmp_path / "bundle")
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", bundle], check=True,
                   capture_output=True)
    assert os.readlink(os.path.join(bundle, "rootfs/bin/sh")) == "/bin/busybox"
    assert os.path.exists(os.path.join(bundle, "config.json"))


# ------------------------------------------------------------------ hostile


def _save_bytes(src) -> bytes:
    buf = io.BytesIO()
    save_docker_archive(src.content, src.images, ["busybox"], buf)
    return buf.getvalue()


def _rewrite(data: bytes, mutate) -> bytes:
    """Copy a tar, letting mutate(info, payload) return replacement entries."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src_tar, \
            tarfile.open(fileobj=out, mode="w") as dst_tar:
        for info in src_tar:
            payload = src_tar.extractfile(info).read() if info.isreg() else b""
            for new_info, new_payload in mutate(info, payload):
                new_info.size = len(new_payload) if new_info.isreg() else 0
                dst_tar.addfile(new_info, io.BytesIO(new_payload) if new_info.isreg() else None)
    return out.getvalue()


def _assert_rejected(dst, data: bytes, error) -> None:
    with pytest.raises(error):
        load_archive(dst.content, dst.images, io.BytesIO(data))
    assert dst.images.list() == []


def test_traversal_member_rejected(src, dst, tmp_path) -> None:
    def add_escape(info, payload):
        yield info, payload
        if info.name == "oci-layout":
            evil = tarfile.TarInfo("../../escaped-by-dockyard-test")
            yield evil, b"pwned"

    _assert_rejected(dst, _rewrite(_save_bytes(src), add_escape), errdefs.InvalidArgument)
    assert not os.path.exists(os.path.join(os.path.dirname(str(tmp_path)),
                                           "escaped-by-dockyard-test"))


@pytest.mark.parametrize("linkname", ["/etc/passwd", "../../../etc/passwd"])
def test_symlink_out_of_archive_rejected(src, dst, linkname) -> None:
    def add_link(info, payload):
        yield info, payload
        if info.name == "oci-layout":
            link = tarfile.TarInfo("blobs/evil")
            link.type, link.linkname = tarfile.SYMTYPE, linkname
            yield link, b""

    _assert_rejected(dst, _rewrite(_save_bytes(src), add_link), errdefs.InvalidArgument)


def test_absolute_member_rejected(src, dst) -> None:
    def absolute(info, payload):
        if info.name == "manifest.json":
            info.name = "/manifest.json"
        yield info, payload

    _assert_rejected(dst, _rewrite(_save_bytes(src), absolute), errdefs.InvalidArgument)


def test_blob_with_wrong_digest_rejected(src, dst) -> None:
    def corrupt(info, payload):
        if info.name.startswith("blobs/sha256/") and len(payload) > 100000:
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
        yield info, payload

    _assert_rejected(dst, _rewrite(_save_bytes(src), corrupt), errdefs.DataLoss)


def test_legacy_layer_with_wrong_diff_id_rejected(src, dst, tmp_path) -> None:
    """Old layout (no index.json): a layer that does not match the config's diff_id."""
    def legacy(info, payload):
        if info.name in ("index.json", "oci-layout"):
            return
        if info.name.startswith("blobs/sha256/") and len(payload) > 100000:
            payload = payload + b"\0" * 1024  # still a tar, different diff_id
        yield info, payload

    _assert_rejected(dst, _rewrite(_save_bytes(src), legacy), errdefs.DataLoss)


def test_not_an_archive(dst) -> None:
    _assert_rejected(dst, b"this is not a tar file at all" * 100, errdefs.InvalidArgument)
