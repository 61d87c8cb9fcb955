"""Test images made on the spot from the host's static busybox.

There is no Docker Hub here, so every test that needs an image builds this
one: /bin/busybox plus a symlink per applet, a minimal /etc, and CMD ["sh"].
Every tar header is fixed (mtime, owners, order) so the image digest is the
same on every run with the same busybox binary.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from typing import BinaryIO

from dockyard import errdefs
from dockyard.image.core import ContentStore, Snapshotter
from dockyard.image.images import Image, ImageStore
from dockyard.image.importer import import_rootfs

# 2000-01-01T00:00:00Z: any fixed instant keeps the digests stable.
FIXED_MTIME = 946684800
BUSYBOX_PATH = "/bin/busybox"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    "user:x:1000:1000:user:/home/user:/bin/sh\n"
)
_GROUP = "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n"

_DIRS = {  # path -> (mode, uid, gid)
    "bin": (0o755, 0, 0), "dev": (0o755, 0, 0), "etc": (0o755, 0, 0),
    "home": (0o755, 0, 0), "home/user": (0o755, 1000, 1000), "proc": (0o555, 0, 0),
    "root": (0o700, 0, 0), "sbin": (0o755, 0, 0), "sys": (0o555, 0, 0),
    "tmp": (0o1777, 0, 0), "usr": (0o755, 0, 0), "usr/bin": (0o755, 0, 0),
    "usr/sbin": (0o755, 0, 0), "var": (0o755, 0, 0), "var/tmp": (0o1777, 0, 0),
}


def find_busybox() -> str:
    path = shutil.which("busybox") or BUSYBOX_PATH
    if not os.path.exists(path):
        raise errdefs.FailedPrecondition(
            "busybox not found: install the Debian package busybox-static")
    return os.path.realpath(path)


def _applets(busybox: str) -> list[str]:
    out = subprocess.run([busybox, "--list-full"], check=True, capture_output=True,
                         text=True).stdout
    return sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()}
                  - {"bin/busybox"})


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    return info


def write_busybox_rootfs_tar(out: BinaryIO, busybox: str | None = None) -> None:
    """Write the busybox rootfs as a tar with fixed headers to out."""
    busybox = busybox or find_busybox()
    applets = _applets(busybox)
    dirs = dict(_DIRS)
    for applet in applets:
        parent = os.path.dirname(applet)
        while parent and parent not in dirs:
            dirs[parent] = (0o755, 0, 0)
            parent = os.path.dirname(parent)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(dirs):
            mode, uid, gid = dirs[path]
            tar.addfile(_info(path + "/", tarfile.DIRTYPE, mode, uid, gid))
        size = os.path.getsize(busybox)
        info = _info("bin/busybox", tarfile.REGTYPE, 0o755)
        info.size = size
        with open(busybox, "rb") as f:
            tar.addfile(info, f)
        for applet in applets:
            link = _info(applet, tarfile.SYMTYPE, 0o777)
            link.linkname = "/bin/busybox"
            tar.addfile(link)
        for name, text in (("etc/passwd", _PASSWD), ("etc/group", _GROUP),
                           ("etc/hostname", ""), ("etc/hosts", ""), ("etc/resolv.conf", "")):
            data = text.encode()
            info = _info(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def build_busybox_image(store: ContentStore, images: ImageStore | None,
                        snapshotter: Snapshotter | None = None,
                        reference: str = "busybox:latest", *,
                        snapshotter_name: str = "overlayfs") -> Image:
    """Import the busybox rootfs as `reference` (CMD ["sh"]); with a
    snapshotter, also unpack it so containers can start from it at once."""
    with tempfile.TemporaryFile() as spool:
        write_busybox_rootfs_tar(spool)
        spool.seek(0)
        image, _ = import_rootfs(
            store, images, spool, reference,
            changes=[f"ENV {DEFAULT_PATH_ENV}", 'CMD ["sh"]'],
            created=FIXED_MTIME, history_created_by="dockyard testimages busybox")
    if snapshotter is not None:
        from dockyard.image.unpack import unpack

        unpack(store, snapshotter, image.target, snapshotter_name=snapshotter_name)
    return image


def make_busybox_rootfs(dest: str, busybox: str | None = None) -> None:
    """Write the same busybox rootfs as a plain directory (for OCI bundles)."""
    from dockyard.image.layers import apply_layer

    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryFile() as spool:
        write_busybox_rootfs_tar(spool, busybox)
        spool.seek(0)
        apply_layer(dest, spool, compression=None)
