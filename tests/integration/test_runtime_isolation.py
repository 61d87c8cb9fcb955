"""Isolation as a user would check it from inside a busybox container:
PID 1, hostname, only `lo` (UP) in a new netns, capabilities, user and
groups, umask, cwd, env, rlimits, sysctl, joined netns, user namespaces.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.runtime_helpers import (
    DOCKER_CAP_MASK,
    probe_script,
    proc_status_field,
    sections,
    sh,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_root]


def test_default_spec_isolation(bundle, session_env):
    """One container, everything a `docker run` user sees by default."""
    probes = {
        "pid": "echo $$",
        "hostname": "hostname",
        "links": "ls /sys/class/net",
        "lo": "ip link show lo",
        "status": "cat /proc/self/status",
        "id": "id",
        "umask": "umask",
        "cwd": "pwd",
        "env": "env",
        "nofile": "ulimit -n",
        "ps": "ps -o pid,comm",
    }
    r = sh(bundle, session_env, probe_script(probes))
    assert r.rc == 0, r.err
    s = sections(r.out)
    assert s["pid"] == "1"
    assert s["hostname"] == "dockyard"
    assert s["links"].split() == ["lo"]
    assert "UP" in s["lo"].split("<", 1)[1].split(">", 1)[0].split(",")
    assert proc_status_field(s["status"], "CapEff") == DOCKER_CAP_MASK
    assert proc_status_field(s["status"], "CapPrm") == DOCKER_CAP_MASK
    assert proc_status_field(s["status"], "CapBnd") == DOCKER_CAP_MASK
    assert proc_status_field(s["status"], "CapInh") == "0000000000000000"
    assert proc_status_field(s["status"], "CapAmb") == "0000000000000000"
    assert proc_status_field(s["status"], "NoNewPrivs") == "1"
    assert s["id"] == "uid=0(root) gid=0(root)"
    assert s["umask"] == "0022"
    assert s["cwd"] == "/"
    env = s["env"].splitlines()
    assert "TERM=xterm" in env and "HOME=/root" in env
    assert s["nofile"] == "1024"
    # Only the container's own processes are visible.
    pids = [line.split()[0] for line in s["ps"].splitlines()[1:]]
    assert "1" in pids and len(pids) <= 3, s["ps"]


def test_user_groups_umask_cwd_env_rlimits(bundle, session_env):
    process = bundle.config["process"]
    process["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10, 65534], "umask": 0o027}
    process["cwd"] = "/home/user"
    process["env"].append("GREETING=hello world")
    process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256},
                          {"type": "RLIMIT_NPROC", "hard": 777, "soft": 777}]
    bundle.config["hostname"] = "custom-host"
    bundle.config["domainname"] = "example.test"
    probes = {"id": "id", "umask": "umask", "cwd": "pwd", "greeting": 'echo "$GREETING"',
              "home": 'echo "$HOME"', "nofile": "ulimit -n", "nofile_hard": "ulimit -Hn",
              "nproc": "ulimit -u", "hostname": "hostname", "domain": "cat /proc/sys/kernel/domainname",
              "status": "cat /proc/self/status"}
    r = sh(bundle, session_env, probe_script(probes))
    assert r.rc == 0, r.err
    s = sections(r.out)
    assert s["id"].startswith("uid=1000(user) gid=1000(user) groups=")
    groups = s["id"].split("groups=", 1)[1]
    assert "10" in groups and "65534(nogroup)" in groups
    assert s["umask"] == "0027"
    assert s["cwd"] == "/home/user"
    assert s["greeting"] == "hello world"
    assert s["home"] == "/home/user"
    assert (s["nofile"], s["nofile_hard"], s["nproc"]) == ("256", "512", "777")
    assert s["hostname"] == "custom-host"
    assert s["domain"] == "example.test"
    # A non-root user keeps no effective capabilities (no ambient set given).
    assert proc_status_field(s["status"], "CapEff") == "0000000000000000"
    assert proc_status_field(s["status"], "CapBnd") == DOCKER_CAP_MASK


def test_sysctl_in_new_netns(bundle, session_env):
    bundle.config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1",
                                        "net.ipv4.ping_group_range": "0 100"}
    r = sh(bundle, session_env, "cat /proc/sys/net/ipv4/ip_forward "
           "/proc/sys/net/ipv4/ping_group_range")
    assert r.rc == 0, r.err
    assert r.out.split() == ["1", "0", "100"]
    # The host's value is untouched.
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        assert f.read().split() != ["0", "100"]


@pytest.fixture
def netns(session_env):
    name = f"{session_env.tag}-{os.urandom(3).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # A mark only this netns carries.
        subprocess.run(["ip", "netns", "exec", name, "sh", "-c",
                        "echo '7 8' > /proc/sys/net/ipv4/ping_group_range"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_join_existing_netns_by_path(bundle, session_env, netns):
    for ns in bundle.config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/run/netns/{netns}"
    r = sh(bundle, session_env, "readlink /proc/self/ns/net; "
           "cat /proc/sys/net/ipv4/ping_group_range")
    assert r.rc == 0, r.err
    link, marks = r.out.splitlines()
    assert link == f"net:[{os.stat(f'/run/netns/{netns}').st_ino}]"
    assert marks.split() == ["7", "8"]


def _userns(bundle, host_id: int) -> None:
    bundle.config["linux"]["namespaces"].append({"type": "user"})
    bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": host_id, "size": 65536}]
    bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": host_id, "size": 65536}]


def test_user_namespace_identity_mapping(bundle, session_env):
    _userns(bundle, 0)
    r = sh(bundle, session_env, "cat /proc/self/uid_map /proc/self/gid_map; id -u; "
           "readlink /proc/self/ns/user")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["0", "0", "65536"]
    assert lines[1].split() == ["0", "0", "65536"]
    assert lines[2] == "0"
    assert lines[3] != os.readlink("/proc/self/ns/user")


def test_user_namespace_maps_root_to_host_range(bundle, session_env):
    host = 100000
    subprocess.run(["chown", "-R", "-h", f"{host}:{host}", bundle.rootfs], check=True)
    os.chown(os.path.join(bundle.rootfs, "home/user"), host + 1000, host + 1000)
    _userns(bundle, host)
    r = sh(bundle, session_env, "cat /proc/self/uid_map; id; touch /root/made-here; "
           "grep CapEff /proc/self/status")
    assert r.rc == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["0", str(host), "65536"]
    assert lines[1].startswith("uid=0(root) gid=0(root)")
    # Root in the container wrote a file owned by the mapped host uid.
    st = os.stat(os.path.join(bundle.rootfs, "root/made-here"))
    assert (st.st_uid, st.st_gid) == (host, host)
    assert lines[2].split()[1] == DOCKER_CAP_MASK
