"""cp -a in Python: copy a tree keeping owners, modes, xattrs, hardlinks, times.

The native snapshotter's only filesystem trick. Special files (devices,
fifos, sockets) are recreated with mknod, symlinks are copied as links and
never followed, hardlinks inside the tree stay hardlinks, and directory
times are set after their children are written.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat

log = logging.getLogger(__name__)


def _copy_xattrs(source: str, target: str) -> None:
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        try:
            value = os.getxattr(source, name, follow_symlinks=False)
            os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.ENODATA):
                raise
            log.warning("cannot copy xattr %s of %s (%s); skipped", name, source, exc)


def _copy_metadata(source: str, target: str, st: os.stat_result) -> None:
    try:
        os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        pass  # rootless: the copy stays ours
    if not stat.S_ISLNK(st.st_mode):
        # After chown, which clears setuid/setgid.
        os.chmod(target, stat.S_IMODE(st.st_mode))
    _copy_xattrs(source, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_entry(source: str, target: str, links: dict[tuple[int, int], str]) -> None:
    st = os.lstat(source)
    mode = st.st_mode
    key = (st.st_dev, st.st_ino)
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        if key in links:
            os.link(links[key], target, follow_symlinks=False)
            return
        links[key] = target
    if stat.S_ISDIR(mode):
        os.mkdir(target, 0o700)
        with os.scandir(source) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            _copy_entry(os.path.join(source, name), os.path.join(target, name), links)
    elif stat.S_ISREG(mode):
        shutil.copyfile(source, target, follow_symlinks=False)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), target)
    else:
        try:
            os.mknod(target, mode, st.st_rdev)
        except PermissionError:
            log.warning("cannot copy special file %s: mknod is not permitted", source)
            return
    _copy_metadata(source, target, st)


def copy_tree(source: str, target: str) -> None:
    """Copy the contents and metadata of directory source into target (made here)."""
    _copy_entry(source, target, {})
