"""Benchmark: `dockyard-runc run` of busybox `true` against Debian's `runc run`
on the same bundle. N runs each (default 30), interleaved so both see the
same machine load; reports median, p90 and the ratio as text and JSON
(bench/results/runc_run.json). Needs root, busybox-static and runc.
dockyard's bytecode is compiled first: with PYTHONDONTWRITEBYTECODE set,
stale .pyc files would have every run recompile from source.

    .venv/bin/python bench/runc_run.py [-n 30] [--runc /usr/sbin/runc]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from dockyard.runtime import specgen  # noqa: E402
from tests.fixtures.busybox import make_busybox_rootfs, runc_binary  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def make_bundle(base: str, cgroup_parent: str) -> str:
    bundle = os.path.join(base, "bundle")
    make_busybox_rootfs(os.path.join(bundle, "rootfs"))
    config = specgen.default_spec(args=["true"])
    config["linux"]["cgroupsPath"] = f"{cgroup_parent}/bench"
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    return bundle


def time_run(cmd: list[str], root: str, bundle: str, cid: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([*cmd, "--root", root, "run", "--bundle", bundle, cid],
                          stdin=subprocess.DEVNULL, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} run failed ({proc.returncode}): {proc.stderr.decode()}")
    return elapsed


def summary(samples: list[float]) -> dict:
    return {"median_ms": round(statistics.median(samples) * 1000, 2),
            "p90_ms": round(percentile(samples, 0.9) * 1000, 2),
            "min_ms": round(min(samples) * 1000, 2), "runs": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--runc", default=shutil.which("runc") or "/usr/sbin/runc")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "runc_run.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    if not os.path.exists(args.runc):
        raise SystemExit(f"{args.runc} not found (apt-get install runc)")
    compileall.compile_dir(os.path.join(os.path.dirname(HERE), "dockyard"), quiet=1)
    base = tempfile.mkdtemp(prefix="dockyard-bench-")
    cgroup_parent = f"/dockyard-bench-{os.getpid()}"
    runtimes = {"dockyard-runc": runc_binary(), "runc": [args.runc]}
    samples: dict[str, list[float]] = {name: [] for name in runtimes}
    try:
        bundle = make_bundle(base, cgroup_parent)
        for i in range(args.warmup + args.runs):
            for name, cmd in runtimes.items():
                root = os.path.join(base, f"root-{name}")
                elapsed = time_run(cmd, root, bundle, f"bench-{i}")
                if i >= args.warmup:
                    samples[name].append(elapsed)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            for path in (f"/sys/fs/cgroup/{hierarchy}{cgroup_parent}/bench",
                         f"/sys/fs/cgroup/{hierarchy}{cgroup_parent}",
                         f"/sys/fs/cgroup{cgroup_parent}/bench", f"/sys/fs/cgroup{cgroup_parent}"):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
    result = {name: summary(values) for name, values in samples.items()}
    result["ratio_median"] = round(result["dockyard-runc"]["median_ms"]
                                   / result["runc"]["median_ms"], 3)
    result["ratio_p90"] = round(result["dockyard-runc"]["p90_ms"] / result["runc"]["p90_ms"], 3)
    result["host"] = {"kernel": os.uname().release, "cpus": os.cpu_count(),
                      "python": sys.version.split()[0]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"busybox `true`, {args.runs} runs each, interleaved")
    for name in runtimes:
        r = result[name]
        print(f"  {name:14s} median {r['median_ms']:8.1f} ms   p90 {r['p90_ms']:8.1f} ms"
              f"   min {r['min_ms']:8.1f} ms")
    print(f"  ratio dockyard-runc / runc: median {result['ratio_median']:.2f}x, "
          f"p90 {result['ratio_p90']:.2f}x")
    print(f"  JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
