"""`make demo`: build a busybox bundle from the host's busybox-static and run
real containers with dockyard-runc, showing what a user would check.

Run as root: python -m dockyard.demo
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BOLD = "\033[1m" if sys.stdout.isatty() else ""
RESET = "\033[0m" if sys.stdout.isatty() else ""


def step(title: str) -> None:
    print(f"\n{BOLD}== {title}{RESET}", flush=True)


def runc(root: str, *args: str, check: bool = True, capture: bool = False,
         cwd: str | None = None) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "dockyard-runc")
    cmd = [exe, "--root", root, *args]
    print(f"$ dockyard-runc {' '.join(args)}", flush=True)
    result = subprocess.run(cmd, cwd=cwd, text=True,
                            capture_output=capture)
    if capture and result.stdout:
        print(result.stdout, end="", flush=True)
    if check and result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: dockyard-runc {args[0]} failed ({result.returncode})")
    return result


def main() -> int:
    if os.geteuid() != 0:
        print("make demo runs real containers: run it as root", file=sys.stderr)
        return 1
    from dockyard.image.testimages import make_busybox_rootfs
    from dockyard.runtime.specgen import default_spec

    base = tempfile.mkdtemp(prefix="dockyard-demo-")
    root = os.path.join(base, "state")
    bundle = os.path.join(base, "bundle")
    try:
        step("Building a busybox bundle from the host's busybox-static")
        make_busybox_rootfs(os.path.join(bundle, "rootfs"))
        print(f"bundle: {bundle}")

        probe = (
            "echo \"I am PID $$ in my PID namespace\"; "
            "echo \"hostname: $(hostname)\"; "
            "echo \"network interfaces: $(ls /sys/class/net | tr '\\n' ' ')\"; "
            "echo \"processes I can see:\"; ps -o pid,user,args; "
            "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
            "echo \"/proc/keys is masked: $(wc -c < /proc/keys) bytes\"; "
            "(echo 1 > /proc/sys/kernel/sysrq) 2>/dev/null || echo '/proc/sys is read-only'"
        )
        config = default_spec(args=["sh", "-c", probe], hostname="dockyard-demo")
        config["linux"]["cgroupsPath"] = f"/dockyard-demo/{os.getpid()}-run"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f, indent=2)

        step("dockyard-runc run: an isolated container")
        started = time.perf_counter()
        runc(root, "run", "demo-run", cwd=bundle)
        print(f"(create + start + wait + delete took {1000 * (time.perf_counter() - started):.0f} ms)")

        step("The create/start split, exec, state, pause and delete")
        config["process"]["args"] = ["sh", "-c", "while true; do sleep 1; done"]
        config["linux"]["cgroupsPath"] = f"/dockyard-demo/{os.getpid()}-life"
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        devnull = open(os.devnull, "w")
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "dockyard-runc"),
                        "--root", root, "create", "--bundle", bundle, "demo-life"],
                       check=True, stdout=devnull, stderr=devnull, stdin=subprocess.DEVNULL)
        print("$ dockyard-runc create --bundle BUNDLE demo-life")
        _status(root, "demo-life")
        runc(root, "start", "demo-life")
        _status(root, "demo-life")
        runc(root, "exec", "demo-life", "ps", "-o", "pid,args")
        runc(root, "pause", "demo-life")
        _status(root, "demo-life")
        runc(root, "resume", "demo-life")
        runc(root, "ps", "demo-life", capture=True)
        runc(root, "kill", "demo-life", "KILL")
        time.sleep(0.2)
        _status(root, "demo-life")
        runc(root, "delete", "demo-life")
        runc(root, "list", capture=True)
        containerd_demo(base)
        step("Done: every container removed, nothing left behind")
        return 0
    finally:
        for name in ("demo-run", "demo-life"):
            subprocess.run([os.path.join(os.path.dirname(sys.executable), "dockyard-runc"),
                            "--root", root, "delete", "--force", name],
                           capture_output=True)
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            path = os.path.join("/sys/fs/cgroup", hierarchy, "dockyard-demo")
            if os.path.isdir(path):
                for entry in os.listdir(path):
                    if os.path.isdir(os.path.join(path, entry)):
                        try:
                            os.rmdir(os.path.join(path, entry))
                        except OSError:
                            pass
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        shutil.rmtree(base, ignore_errors=True)


CTR = "/usr/bin/ctr"
IMAGE = "docker.io/library/busybox:latest"


def _busybox_archive(path: str) -> None:
    from dockyard.image.archive import save_docker_archive
    from dockyard.image.content import LocalContentStore
    from dockyard.image.images import ImageStore
    from dockyard.image.testimages import build_busybox_image

    work = os.path.dirname(path)
    store = LocalContentStore(os.path.join(work, "archive-content"))
    images = ImageStore(os.path.join(work, "archive-images.db"))
    try:
        build_busybox_image(store, images, reference=IMAGE)
        with open(path, "wb") as f:
            save_docker_archive(store, images, [IMAGE], f)
    finally:
        store.close()
        images.close()


class _Containerd:
    """dockyard-containerd with everything under one demo directory."""

    def __init__(self, top: str) -> None:
        self.root = os.path.join(top, "root")
        self.state = os.path.join(top, "state")
        self.address = os.path.join(self.state, "containerd.sock")
        self.log = os.path.join(top, "daemon.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = os.path.join(os.path.dirname(sys.executable), "dockyard-containerd")
        started = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "--root", self.root, "--state", self.state,
                                          "--address", self.address], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"demo: dockyard-containerd exited; see {self.log}")
            if subprocess.run([CTR, "--address", self.address, "version"],
                              capture_output=True).returncode == 0:
                print(f"dockyard-containerd ready (pid {self.proc.pid}) in "
                      f"{1000 * (time.perf_counter() - started):.0f} ms")
                return
            time.sleep(0.05)
        raise SystemExit(f"demo: dockyard-containerd did not become ready; see {self.log}")

    def ctr(self, *args: str, check: bool = True, show: bool = True) -> subprocess.CompletedProcess:
        if show:
            print(f"$ ctr {' '.join(args)}", flush=True)
        result = subprocess.run([CTR, "--address", self.address, "-n", "demo", *args],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if show and result.stdout:
            print(result.stdout, end="", flush=True)
        if check and result.returncode != 0:
            raise SystemExit(f"demo: ctr {args[0]} failed: {result.stderr.strip()}")
        return result

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def containerd_demo(base: str) -> None:
    if not os.path.exists(CTR):
        step("Skipping the containerd part: ctr is not installed (apt-get install containerd)")
        return
    step("dockyard-containerd, driven by containerd's own client `ctr`")
    daemon = _Containerd(os.path.join(base, "containerd"))
    os.makedirs(os.path.dirname(daemon.log), exist_ok=True)
    try:
        daemon.start()
        daemon.ctr("version")
        archive = os.path.join(base, "busybox.tar")
        _busybox_archive(archive)
        daemon.ctr("images", "import", archive)
        daemon.ctr("images", "ls", "-q")
        started = time.perf_counter()
        daemon.ctr("run", "--rm", IMAGE, "hello", "sh", "-c",
                   "echo hello from $(hostname), PID $$; cat /proc/self/cgroup | head -1")
        print(f"(ctr run --rm took {1000 * (time.perf_counter() - started):.0f} ms)")
        daemon.ctr("run", "-d", IMAGE, "sleeper", "sh", "-c",
                   "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done")
        daemon.ctr("tasks", "ls")
        daemon.ctr("tasks", "exec", "--exec-id", "look", "sleeper", "ps", "-o", "pid,args")
        step("SIGKILL dockyard-containerd: the container keeps running in its shim")
        daemon.kill9()
        print(f"daemon pid {daemon.proc.pid} killed")
        time.sleep(1.5)
        daemon.start()
        daemon.ctr("tasks", "ls")
        daemon.ctr("tasks", "exec", "--exec-id", "after", "sleeper", "sh", "-c",
                   "echo still counting: uptime $(cut -d' ' -f1 /proc/uptime)")
        daemon.ctr("tasks", "kill", "-s", "SIGKILL", "sleeper")
        for _ in range(100):
            if daemon.ctr("tasks", "delete", "sleeper", check=False, show=False).returncode == 0:
                break
            time.sleep(0.05)
        daemon.ctr("containers", "rm", "sleeper")
        daemon.ctr("tasks", "ls")
    finally:
        for cid in ("sleeper", "hello"):
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False, show=False)
                time.sleep(0.2)
                daemon.ctr("tasks", "delete", cid, check=False, show=False)
                daemon.ctr("containers", "rm", cid, check=False, show=False)
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.ctr("images", "rm", "--sync", IMAGE, check=False, show=False)
        daemon.stop()
        # ctr puts containers in /<namespace>/<id>; the runtime leaves the
        # parent, as runc does.
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            try:
                os.rmdir(os.path.join("/sys/fs/cgroup", hierarchy, "demo"))
            except OSError:
                pass
        subprocess.run(["umount", "-R", "-l", daemon.root], capture_output=True)
        subprocess.run(["umount", "-R", "-l", daemon.state], capture_output=True)


def _status(root: str, name: str) -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "dockyard-runc")
    out = subprocess.run([exe, "--root", root, "state", name], capture_output=True, text=True)
    if out.returncode == 0:
        state = json.loads(out.stdout)
        print(f"   state: {state['status']} (pid {state['pid']})")
    else:
        print(f"   state: {out.stderr.strip()}")


if __name__ == "__main__":
    sys.exit(main())
