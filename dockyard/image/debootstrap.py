"""Debian base images built with debootstrap from a Debian mirror.

debootstrap takes minutes, so the finished rootfs tarball is cached under
cache_dir keyed by suite, variant, mirror and the extra packages; a cached
tarball is imported in seconds. The cache file is written atomically, so an
interrupted build never leaves a tarball that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

from dockyard import errdefs
from dockyard.image.core import ContentStore
from dockyard.image.images import Image, ImageStore
from dockyard.image.importer import import_rootfs, tar_directory

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE_DIR = "/var/cache/dockyard/debootstrap"
_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Left empty (not deleted): apt expects the directories to exist.
_CLEAN_DIRS = ("var/lib/apt/lists", "var/cache/apt/archives", "var/cache/debconf", "tmp",
               "var/tmp", "var/log")
_CLEAN_FILES = ("var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin",
                "var/cache/ldconfig/aux-cache", "etc/machine-id", "etc/hostname",
                "etc/resolv.conf", "etc/hosts")


def cache_key(suite: str, variant: str, mirror: str, include: Sequence[str]) -> str:
    spec = json.dumps({"suite": suite, "variant": variant, "mirror": mirror,
                       "include": sorted(set(include))}, sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
    return f"{suite}-{variant}-{digest}"


def _clean_rootfs(root: str) -> None:
    for rel in _CLEAN_DIRS:
        path = os.path.join(root, rel)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        for entry in os.scandir(path):
            if entry.name in ("partial", "lock"):
                continue  # apt recreates neither; keep the layout it expects
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    for rel in _CLEAN_FILES:
        path = os.path.join(root, rel)
        if os.path.lexists(path):
            os.unlink(path)
    # Files the runtime bind-mounts over must exist as mount targets.
    for rel in ("etc/hostname", "etc/resolv.conf", "etc/hosts"):
        with open(os.path.join(root, rel), "w"):
            pass
    with open(os.path.join(root, "etc/machine-id"), "w"):
        pass


def build_rootfs_tarball(suite: str = "bookworm", *, variant: str = "minbase",
                         mirror: str | None = None, include: Sequence[str] = (),
                         cache_dir: str = DEFAULT_CACHE_DIR) -> str:
    """Return the path of a cached rootfs tar for the arguments, building it
    with debootstrap (slow: minutes) when absent."""
    mirror = mirror or DEFAULT_MIRROR
    os.makedirs(cache_dir, exist_ok=True)
    tarball = os.path.join(cache_dir, cache_key(suite, variant, mirror, include) + ".tar")
    if os.path.exists(tarball):
        return tarball
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.path.exists(debootstrap):
        raise errdefs.FailedPrecondition("debootstrap not found: install the debootstrap package")
    workdir = tempfile.mkdtemp(prefix="dockyard-debootstrap-", dir=cache_dir)
    try:
        root = os.path.join(workdir, "rootfs")
        cmd = [debootstrap, f"--variant={variant}"]
        if include:
            cmd.append("--include=" + ",".join(include))
        cmd += [suite, root, mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-2000:]
            log = os.path.join(root, "debootstrap", "debootstrap.log")
            if os.path.exists(log):
                with open(log, errors="replace") as f:
                    tail += "\n" + f.read()[-2000:]
            raise errdefs.Unavailable(
                f"debootstrap of {suite} from {mirror} failed (exit {proc.returncode}); "
                f"check the mirror is reachable:\n{tail}")
        _clean_rootfs(root)
        tmp = os.path.join(workdir, "rootfs.tar")
        with open(tmp, "wb") as out:
            tar_directory(root, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, tarball)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return tarball


def build_debian_image(store: ContentStore, images: ImageStore | None,
                       reference: str = "debian:bookworm", *, suite: str = "bookworm",
                       variant: str = "minbase", mirror: str | None = None,
                       include: Sequence[str] = (),
                       cache_dir: str = DEFAULT_CACHE_DIR) -> Image:
    """A Debian image (CMD ["bash"]) from debootstrap, via the tarball cache."""
    tarball = build_rootfs_tarball(suite, variant=variant, mirror=mirror, include=include,
                                   cache_dir=cache_dir)
    created = os.stat(tarball).st_mtime
    with open(tarball, "rb") as f:
        image, _ = import_rootfs(
            store, images, f, reference, changes=[f"ENV {_PATH_ENV}", 'CMD ["bash"]'],
            created=int(created),
            history_created_by=f"debootstrap --variant={variant} {suite} "
                               f"{mirror or DEFAULT_MIRROR}")
    return image
