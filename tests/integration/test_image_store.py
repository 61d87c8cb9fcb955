"""Images in the store, unpacked into real snapshotters and mounted.

No registry: the busybox test image is built from the host's busybox.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

from dockyard import errdefs
from dockyard.image.content import LocalContentStore
from dockyard.image.core import SnapshotKind
from dockyard.image.images import ImageStore
from dockyard.image.importer import export_rootfs, import_rootfs
from dockyard.image.snapshots import NativeSnapshotter, OverlaySnapshotter
from dockyard.image.snapshots.mount import mounted
from dockyard.image.testimages import build_busybox_image
from dockyard.image.unpack import (
    LABEL_GC_CONFIG,
    LABEL_GC_LAYER,
    chain_ids,
    image_layers,
    prepare_rootfs,
    unpack,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]

if not os.path.exists("/bin/busybox"):
    pytest.skip("busybox-static is not installed", allow_module_level=True)


@pytest.fixture
def stores(tmp_path):
    content = LocalContentStore(str(tmp_path / "content"))
    images = ImageStore(tmp_path / "images.db")
    yield content, images
    images.close()
    content.close()


def _snapshotter(kind: str, root: str):
    if kind == "overlayfs":
        try:
            return OverlaySnapshotter(root)
        except errdefs.Unavailable as exc:
            pytest.skip(f"overlayfs unavailable: {exc}")
    return NativeSnapshotter(root)


def _layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_busybox_image_is_deterministic(stores, tmp_path) -> None:
    content, images = stores
    first = build_busybox_image(content, images)
    other = LocalContentStore(str(tmp_path / "other"))
    try:
        second = build_busybox_image(other, None)
    finally:
        other.close()
    assert first.name == "docker.io/library/busybox:latest"
    assert first.target.digest == second.target.digest
    _, _, config, layers = image_layers(content, first.target)
    assert config["config"]["Cmd"] == ["sh"]
    assert config["os"] == "linux" and len(layers) == 1
    manifest_labels = content.info(first.target.digest).labels
    assert manifest_labels[LABEL_GC_CONFIG] == config_digest(content, first.target)
    assert manifest_labels[LABEL_GC_LAYER + "0"] == layers[0].digest


def config_digest(content, target) -> str:
    return image_layers(content, target)[1].digest


@pytest.mark.parametrize("kind", ["overlayfs", "native"])
def test_unpack_busybox_mount_and_check_files(stores, tmp_path, kind) -> None:
    content, images = stores
    image = build_busybox_image(content, images)
    snapshotter = _snapshotter(kind, str(tmp_path / kind))
    try:
        result = unpack(content, snapshotter, image.target, snapshotter_name=kind)
        assert [layer.extracted for layer in result.layers] == [True]
        _, _, config, _ = image_layers(content, image.target)
        assert result.chain_id == chain_ids(config["rootfs"]["diff_ids"])[-1]
        info = snapshotter.stat(result.chain_id)
        assert info.kind is SnapshotKind.COMMITTED
        assert info.labels["containerd.io/snapshot.ref"] == result.chain_id
        assert content.info(result.config.digest).labels[
            f"containerd.io/gc.ref.snapshot.{kind}"] == result.chain_id

        again = unpack(content, snapshotter, image.target, snapshotter_name=kind)
        assert [layer.extracted for layer in again.layers] == [False]  # "Already exists"

        mounts = prepare_rootfs(snapshotter, image, "ctr-1", content=content,
                                snapshotter_name=kind)
        with mounted(mounts) as root:
            assert os.readlink(os.path.join(root, "bin/sh")) == "/bin/busybox"
            assert os.stat(os.path.join(root, "tmp")).st_mode & 0o7777 == 0o1777
            with open(os.path.join(root, "etc/passwd")) as f:
                passwd = f.read()
            assert "nobody:x:65534:" in passwd and "user:x:1000:" in passwd
            assert os.stat(os.path.join(root, "home/user")).st_uid == 1000
            out = subprocess.run(["chroot", root, "/bin/sh", "-c", "echo hi > /tmp/x; ls /bin"],
                                 capture_output=True, text=True, check=True).stdout
            assert "busybox" in out
            exported = io.BytesIO()
            export_rootfs(root, exported)
        exported.seek(0)
        with tarfile.open(fileobj=exported) as tar:
            names = set(tar.getnames())
        assert {"bin/busybox", "tmp/x", "etc/group"} <= names
        snapshotter.remove("ctr-1")
    finally:
        snapshotter.close()


@pytest.mark.parametrize("kind", ["overlayfs", "native"])
def test_two_layers_with_whiteout(stores, tmp_path, kind) -> None:
    """A second image on the busybox base shares its snapshot and deletes a file."""
    content, images = stores
    base = build_busybox_image(content, images)
    snapshotter = _snapshotter(kind, str(tmp_path / kind))
    try:
        unpack(content, snapshotter, base.target, snapshotter_name=kind)
        # Build a two-layer image by hand: busybox's layer + one that removes etc/hostname.
        manifest_desc, config_desc, config, layers = image_layers(content, base.target)
        top, _ = import_rootfs(content, None, io.BytesIO(_layer_tar({
            "etc/.wh.hostname": b"", "etc/added": b"new\n"})), None)
        _, _, top_config, top_layers = image_layers(content, top.target)
        from dockyard.image.importer import write_json_blob

        config2 = dict(config, rootfs={"type": "layers", "diff_ids":
                                       config["rootfs"]["diff_ids"] +
                                       top_config["rootfs"]["diff_ids"]})
        config2_desc, _ = write_json_blob(content, config2, config_desc.media_type)
        manifest2 = {"schemaVersion": 2, "mediaType": manifest_desc.media_type,
                     "config": config2_desc.to_json(),
                     "layers": [d.to_json() for d in layers + top_layers]}
        manifest2_desc, _ = write_json_blob(content, manifest2, manifest_desc.media_type)
        result = unpack(content, snapshotter, manifest2_desc, snapshotter_name=kind)
        assert [layer.extracted for layer in result.layers] == [False, True]
        mounts = prepare_rootfs(snapshotter, result.chain_id, "ctr-2")
        with mounted(mounts) as root:
            assert not os.path.lexists(os.path.join(root, "etc/hostname"))
            assert open(os.path.join(root, "etc/added")).read() == "new\n"
            assert os.path.exists(os.path.join(root, "etc/passwd"))
        snapshotter.remove("ctr-2")
    finally:
        snapshotter.close()


@pytest.mark.parametrize("kind", ["overlayfs", "native"])
def test_diff_id_mismatch_rejected(stores, tmp_path, kind) -> None:
    content, images = stores
    image, _ = import_rootfs(content, images, io.BytesIO(_layer_tar({"a": b"1"})), "bad:1")
    manifest_desc, config_desc, config, layers = image_layers(content, image.target)
    from dockyard.image.importer import write_json_blob

    lying = dict(config, rootfs={"type": "layers", "diff_ids": ["sha256:" + "e" * 64]})
    lying_desc, _ = write_json_blob(content, lying, config_desc.media_type)
    manifest = {"schemaVersion": 2, "mediaType": manifest_desc.media_type,
                "config": lying_desc.to_json(), "layers": [d.to_json() for d in layers]}
    bad_desc, _ = write_json_blob(content, manifest, manifest_desc.media_type)
    snapshotter = _snapshotter(kind, str(tmp_path / kind))
    try:
        with pytest.raises(errdefs.DataLoss, match="diff_id"):
            unpack(content, snapshotter, bad_desc, snapshotter_name=kind)
        assert list(snapshotter.walk()) == []  # the extraction snapshot was removed
    finally:
        snapshotter.close()


def test_prepare_rootfs_unknown_chain(tmp_path) -> None:
    snapshotter = NativeSnapshotter(str(tmp_path / "native"))
    try:
        with pytest.raises(errdefs.NotFound):
            prepare_rootfs(snapshotter, "sha256:" + "f" * 64, "ctr")
        mounts = prepare_rootfs(snapshotter, None, "empty")
        assert mounts and mounts[0].type == "bind"
    finally:
        snapshotter.close()
        shutil.rmtree(tmp_path / "native", ignore_errors=True)
