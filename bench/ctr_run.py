"""`ctr run --rm busybox true` on dockyard-containerd vs containerd 1.6 + runc.

    .venv/bin/python bench/ctr_run.py [-n 20] [--out bench/results/ctr_run.json]

Both daemons run side by side under a temp dir; runs are interleaved so
machine noise hits both alike. Reports medians, the ratio (dockyard / containerd)
and the resident memory of one dockyard shim with a running task.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.fixtures.containerd import _stop, start_dockyard, start_real_containerd  # noqa: E402

IMAGE = "docker.io/library/busybox:latest"


def _archive(work: str) -> str:
    from dockyard.image.archive import save_docker_archive
    from dockyard.image.content import LocalContentStore
    from dockyard.image.images import ImageStore
    from dockyard.image.testimages import build_busybox_image

    store = LocalContentStore(os.path.join(work, "content"))
    images = ImageStore(os.path.join(work, "images.db"))
    build_busybox_image(store, images, reference=IMAGE)
    out = os.path.join(work, "busybox.tar")
    with open(out, "wb") as f:
        save_docker_archive(store, images, [IMAGE], f)
    store.close()
    images.close()
    return out


def _one_run(daemon, cid: str) -> float:
    start = time.perf_counter()
    r = daemon.ctr("run", "--rm", IMAGE, cid, "true", ns="bench")
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{daemon.name}: ctr run failed: {r.stderr}")
    return elapsed


def _shim_rss(daemon) -> int:
    r = daemon.ctr("run", "-d", IMAGE, "rss-probe", "sleep", "1000", ns="bench")
    if r.returncode != 0:
        return 0
    try:
        time.sleep(4)  # the runtime worker has gone idle by now
        task_dir = os.path.join(daemon.state, "io.containerd.runtime.v2.task", "bench",
                                "rss-probe")
        with open(os.path.join(task_dir, "shim.json")) as f:
            pid = json.load(f)["pid"]
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    finally:
        daemon.ctr("tasks", "kill", "-s", "SIGKILL", "rss-probe", ns="bench")
        time.sleep(0.3)
        daemon.ctr("tasks", "delete", "rss-probe", ns="bench")
        daemon.ctr("containers", "rm", "rss-probe", ns="bench")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "ctr_run.json"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-ctr-run-")
    archive = _archive(work)
    daemons = [start_dockyard(work)]
    if os.access("/usr/bin/containerd", os.X_OK):
        daemons.append(start_real_containerd(work))
    times: dict[str, list[float]] = {d.name: [] for d in daemons}
    try:
        for d in daemons:
            r = d.ctr("images", "import", archive, ns="bench")
            if r.returncode != 0:
                raise SystemExit(f"{d.name}: import failed: {r.stderr}")
            _one_run(d, "warmup")
        for i in range(args.n):
            for d in daemons:
                times[d.name].append(_one_run(d, f"run{i}"))
        rss = _shim_rss(daemons[0])
    finally:
        for d in daemons:
            _stop(d)
        os.system(f"rm -rf '{work}'")
        # ctr puts containers in /<namespace>/<id>; both runtimes leave the parent.
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join("/sys/fs/cgroup", hierarchy, "bench"))
    result = {"runs": args.n,
              "median_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
              "shim_rss_kib": rss}
    if "containerd" in times:
        result["ratio"] = round(statistics.median(times["dockyard"])
                                / statistics.median(times["containerd"]), 2)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
