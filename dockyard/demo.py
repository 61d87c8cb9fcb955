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
