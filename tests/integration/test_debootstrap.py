"""A Debian image from debootstrap (downloads ~50 MB from the Debian mirror).

Opt-in: DOCKYARD_TEST_DEBOOTSTRAP=1. The rootfs tarball is cached in
DOCKYARD_DEBOOTSTRAP_CACHE (default /var/cache/dockyard/debootstrap), so
only the first run is slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dockyard.image.content import LocalContentStore
from dockyard.image.debootstrap import DEFAULT_CACHE_DIR, build_debian_image
from dockyard.image.images import ImageStore
from dockyard.image.snapshots import NativeSnapshotter
from dockyard.image.snapshots.mount import mounted
from dockyard.image.unpack import image_layers, prepare_rootfs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.requires_root,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("DOCKYARD_TEST_DEBOOTSTRAP") != "1",
                       reason="downloads ~50 MB from the Debian mirror; "
                              "set DOCKYARD_TEST_DEBOOTSTRAP=1 to run"),
    pytest.mark.skipif(shutil.which("debootstrap") is None, reason="debootstrap not installed"),
    pytest.mark.timeout(1200),
]


def test_build_debian_image_and_run_from_it(tmp_path) -> None:
    cache = os.environ.get("DOCKYARD_DEBOOTSTRAP_CACHE", DEFAULT_CACHE_DIR)
    content = LocalContentStore(str(tmp_path / "content"))
    images = ImageStore(tmp_path / "images.db")
    snapshotter = NativeSnapshotter(str(tmp_path / "native"))
    try:
        image = build_debian_image(content, images, cache_dir=cache)
        assert image.name == "docker.io/library/debian:bookworm"
        _, _, config, layers = image_layers(content, image.target)
        assert config["config"]["Cmd"] == ["bash"] and len(layers) == 1
        mounts = prepare_rootfs(snapshotter, image, "c1", content=content,
                                snapshotter_name="native")
        with mounted(mounts) as root:
            assert os.listdir(os.path.join(root, "var/lib/apt/lists")) in ([], ["partial"],
                                                                           ["lock", "partial"],
                                                                           ["partial", "lock"])
            out = subprocess.run(["chroot", root, "bash", "-c", "cat /etc/debian_version"],
                                 capture_output=True, text=True, check=True).stdout
            assert out.strip().startswith("12")
        snapshotter.remove("c1")
        # A second build reuses the cached tarball and gives the same image.
        again = build_debian_image(content, images, cache_dir=cache)
        assert again.target.digest == image.target.digest
    finally:
        snapshotter.close()
        images.close()
        content.close()
