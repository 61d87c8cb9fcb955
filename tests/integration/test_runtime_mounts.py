"""Mounts as seen from inside the container: the standard set and their
flags, masked and read-only paths, bind mounts with ro/nosuid, tmpfs with
options, a read-only root, device nodes and /dev symlinks.
"""

from __future__ import annotations

import os

import pytest

from tests.integration.runtime_helpers import mount_options, probe_script, sections, sh

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]


def test_standard_mounts_masked_and_readonly_paths(bundle, session_env):
    probes = {
        "mounts": "cat /proc/mounts",
        "kcore": "if [ -e /proc/kcore ]; then wc -c < /proc/kcore; else echo absent; fi",
        "keys": "if [ -e /proc/keys ]; then wc -c < /proc/keys; else echo absent; fi",
        "sysw": "echo 1 > /proc/sys/kernel/ns_last_pid 2>&1 && echo WROTE || echo DENIED",
        "sysrq": "echo h > /proc/sysrq-trigger 2>&1 && echo WROTE || echo DENIED",
        "firmware": "ls -A /sys/firmware | wc -l",
        "sysw2": "touch /sys/kernel/x 2>&1 && echo WROTE || echo DENIED",
        "devs": "ls -l /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty",
        "links": "for l in fd stdin stdout stderr ptmx; do echo $l $(readlink /dev/$l); done",
        "null": "echo discard > /dev/null && head -c 4 /dev/zero | wc -c",
        "shm": "touch /dev/shm/x && echo SHM",
    }
    r = sh(bundle, session_env, probe_script(probes))
    assert r.rc == 0, r.err
    s = sections(r.out)
    mounts = s["mounts"]
    assert {"type=proc", "rw", "nosuid", "nodev", "noexec"} <= mount_options(mounts, "/proc")
    assert {"type=tmpfs", "nosuid", "mode=755"} <= mount_options(mounts, "/dev")
    assert {"type=devpts", "nosuid", "noexec", "ptmxmode=666", "mode=620",
            "gid=5"} <= mount_options(mounts, "/dev/pts")
    assert {"type=sysfs", "ro", "nosuid", "nodev", "noexec"} <= mount_options(mounts, "/sys")
    assert {"type=mqueue", "nosuid", "nodev", "noexec"} <= mount_options(mounts, "/dev/mqueue")
    assert {"type=tmpfs", "nosuid", "nodev", "noexec"} <= mount_options(mounts, "/dev/shm")
    assert "ro" in mount_options(mounts, "/sys/fs/cgroup")
    for path in ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"):
        assert "ro" in mount_options(mounts, path), path
    # Masked: reads as empty (or is absent on this kernel).
    assert s["kcore"] in ("0", "absent")
    assert s["keys"] in ("0", "absent")
    assert s["firmware"] == "0"
    assert s["sysw"].endswith("DENIED")
    assert s["sysrq"].endswith("DENIED")
    assert s["sysw2"].endswith("DENIED")
    for dev in ("null", "zero", "full", "random", "urandom", "tty"):
        assert f"/dev/{dev}" in s["devs"]
    assert all(line.startswith("c") for line in s["devs"].splitlines()), s["devs"]
    assert s["links"].splitlines() == ["fd /proc/self/fd", "stdin /proc/self/fd/0",
                                       "stdout /proc/self/fd/1", "stderr /proc/self/fd/2",
                                       "ptmx pts/ptmx"]
    assert s["null"] == "4"
    assert s["shm"] == "SHM"


def test_bind_and_tmpfs_mounts_with_options(bundle, session_env):
    host_dir = os.path.join(bundle.path, "shared")
    os.makedirs(host_dir)
    with open(os.path.join(host_dir, "hello.txt"), "w") as f:
        f.write("from the host\n")
    rw_dir = os.path.join(bundle.path, "rw")
    os.makedirs(rw_dir)
    bundle.config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": host_dir,
         "options": ["rbind", "ro", "nosuid", "nodev"]},
        {"destination": "/rw", "type": "bind", "source": rw_dir, "options": ["bind", "rw"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "noexec", "size=1m", "mode=1700"]},
    ]
    probes = {
        "mounts": "cat /proc/mounts",
        "read": "cat /data/hello.txt",
        "ro": "touch /data/new 2>&1 && echo WROTE || echo DENIED",
        "rw": "echo inside > /rw/out && echo OK",
        "mode": "stat -c %a /scratch",
        "exec": "cp /bin/busybox /scratch/bb && /scratch/bb true 2>&1 && echo RAN || echo NOEXEC",
    }
    r = sh(bundle, session_env, probe_script(probes))
    assert r.rc == 0, r.err
    s = sections(r.out)
    assert {"ro", "nosuid", "nodev"} <= mount_options(s["mounts"], "/data")
    assert "rw" in mount_options(s["mounts"], "/rw")
    scratch = mount_options(s["mounts"], "/scratch")
    assert {"type=tmpfs", "nosuid", "noexec", "size=1024k", "mode=1700"} <= scratch
    assert s["read"] == "from the host"
    assert s["ro"].endswith("DENIED")
    assert s["rw"] == "OK"
    with open(os.path.join(rw_dir, "out")) as f:
        assert f.read() == "inside\n"
    assert s["mode"] == "1700"
    assert s["exec"].endswith("NOEXEC")
    # The host's file is untouched and no mount leaked to the host side.
    assert os.listdir(host_dir) == ["hello.txt"]


def test_readonly_root(bundle, session_env):
    bundle.config["root"]["readonly"] = True
    bundle.config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["nosuid", "nodev"]})
    r = sh(bundle, session_env, "touch /newfile 2>&1 && echo WROTE || echo DENIED; "
           "touch /tmp/ok && echo TMPOK; grep ' / ' /proc/mounts")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert "Read-only file system" in lines[0] and lines[1] == "DENIED"
    assert lines[2] == "TMPOK"
    assert "ro" in lines[3].split()[3].split(",")
    assert not os.path.exists(os.path.join(bundle.rootfs, "newfile"))
