"""Pull benchmark: dockyard pull+unpack vs skopeo copy vs docker pull, loopback registry.

    .venv/bin/python bench/pull.py [--runs 5] [--workdir DIR] [--profile]

Builds (or reuses from the debootstrap cache) a Debian bookworm minbase image,
pushes it once to a docker-registry on 127.0.0.1, then times, interleaved:

  dockyard  pull into a fresh content store + overlay snapshotter, unpacking
            every layer into a committed snapshot while it downloads (end to
            end, like docker pull); dockyard_no_overlap unpacks each layer
            only once its blob is committed
  skopeo    skopeo copy docker://… dir:… (download only, no unpack)
  docker    docker pull, only when a Docker daemon answers

and apply_layer alone on the cached layer blob (MB/s, files/s). Text and
JSON land in bench/results/pull.{txt,json}; --profile adds a cProfile of one
dockyard pull as bench/results/pull-profile.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import drop_tree, median, run_registry, write_results  # noqa: E402

from dockyard.image.content import LocalContentStore  # noqa: E402
from dockyard.image.core import Descriptor  # noqa: E402
from dockyard.image.debootstrap import (  # noqa: E402
    DEFAULT_CACHE_DIR,
    build_debian_image,
    build_rootfs_tarball,
)
from dockyard.image.distribution import pull, push  # noqa: E402
from dockyard.image.layers import apply_layer  # noqa: E402
from dockyard.image.mediatypes import layer_compression  # noqa: E402
from dockyard.image.snapshots.overlay import OverlaySnapshotter  # noqa: E402
from dockyard.image.unpack import StreamUnpacker, image_layers  # noqa: E402

DOCKER_BUDGET_S = 2.2  # DESIGN.md: docker pull of a 49 MB Debian layer from loopback
TARGET_RATIO = 0.7
REPO = "bench/debian"


def prepare_image(cache_dir: str, work: Path) -> tuple[LocalContentStore, Descriptor]:
    t0 = time.monotonic()
    tarball = build_rootfs_tarball("bookworm", variant="minbase", cache_dir=cache_dir)
    print(f"rootfs tarball {tarball} ({os.path.getsize(tarball) / 1e6:.1f} MB, "
          f"{time.monotonic() - t0:.1f} s)", flush=True)
    store = LocalContentStore(work / "source-store")
    image = build_debian_image(store, None, "debian:bookworm", cache_dir=cache_dir)
    return store, image.target


def layer_stats(blob: str) -> dict[str, int]:
    """Entry counts by kind and uncompressed bytes of a layer blob."""
    from dockyard.image.compression import decompressing_reader

    counts = {"entries": 0, "files": 0, "dirs": 0, "symlinks": 0, "other": 0}
    with open(blob, "rb") as raw, decompressing_reader(raw) as plain, \
            tarfile.open(fileobj=plain, mode="r|") as tar:
        for member in tar:
            counts["entries"] += 1
            kind = ("files" if member.isreg() else "dirs" if member.isdir()
                    else "symlinks" if member.issym() else "other")
            counts[kind] += 1
    with open(blob, "rb") as raw, decompressing_reader(raw) as plain:
        size = 0
        while chunk := plain.read(1 << 20):
            size += len(chunk)
    counts["uncompressed_bytes"] = size
    return counts


def inode_floor(work: Path, run: int, stats: dict[str, int]) -> float:
    """Create as many empty files, directories and symlinks as the layer
    has, in one flat directory: the least any extractor (docker's too) pays
    this file system for the layer's inodes, with no data and no parsing."""
    dest = work / f"floor-{run}"
    dest.mkdir()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.perf_counter()
        for i in range(stats["files"]):
            os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
        for i in range(stats["dirs"]):
            os.mkdir(f"d{i}", dir_fd=fd)
        for i in range(stats["symlinks"]):
            os.symlink("target", f"s{i}", dir_fd=fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        drop_tree(dest)


def dockyard_pull(ref: str, work: Path, run: int, overlap: bool = True) -> float:
    """pull + unpack into fresh stores; overlap=False unpacks each layer only
    after its blob is committed (pull's unpack= callback) instead of while
    it downloads (unpack_stream=)."""
    base = work / f"dockyard-{run}"
    store = LocalContentStore(base / "content")
    snapshotter = OverlaySnapshotter(str(base / "snapshots"), check=(run == 0))
    unpacker = StreamUnpacker(store, snapshotter)

    def after_commit(layer: Descriptor) -> None:
        with store.open_blob(layer.digest) as blob:
            unpacker(layer, blob)

    try:
        t0 = time.perf_counter()
        if overlap:
            result = pull(ref, store, unpack_stream=unpacker)
        else:
            result = pull(ref, store, unpack=after_commit)
        unpacker.finish(result.target)
        elapsed = time.perf_counter() - t0
    finally:
        snapshotter.close()
        store.close()
        drop_tree(base)
    return elapsed


def skopeo_copy(ref: str, work: Path, run: int) -> float:
    dest = work / f"skopeo-{run}"
    try:
        t0 = time.perf_counter()
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{ref}", f"dir:{dest}"], check=True)
        return time.perf_counter() - t0
    finally:
        drop_tree(dest)


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_pull(ref: str) -> float:
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
    t0 = time.perf_counter()
    subprocess.run(["docker", "pull", "-q", ref], check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
    return elapsed


def apply_alone(blob: str, media_type: str, work: Path, run: int) -> tuple[float, int]:
    dest = work / f"apply-{run}"
    dest.mkdir()
    try:
        with open(blob, "rb") as f:
            t0 = time.perf_counter()
            result = apply_layer(str(dest), f, compression=layer_compression(media_type))
            return time.perf_counter() - t0, result.size
    finally:
        drop_tree(dest)


def profile_pull(ref: str, work: Path) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    elapsed = dockyard_pull(ref, work, 10_000)
    profiler.disable()
    out = io.StringIO()
    out.write(f"one dockyard pull under cProfile: {elapsed:.3f} s (profiling overhead "
              "included; threads other than the caller's are not profiled)\n\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(35)
    stats.sort_stats("tottime").print_stats(35)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--workdir", default="/var/lib",
                        help="where stores and snapshots are made (default: next to "
                             "/var/lib/docker); a tmpfs such as /dev/shm takes the disk out")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (overlay snapshots)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix=f"dockyard-bench-pull-{os.getpid()}-",
                                 dir=args.workdir))
    try:
        return _run(args, work)
    finally:
        drop_tree(work)


def _run(args: argparse.Namespace, work: Path) -> int:
    source, target = prepare_image(args.cache_dir, work)
    _, _, _, layers = image_layers(source, target)
    blobs = [(str(source.blob_path(layer.digest)), layer) for layer in layers]
    compressed = sum(layer.size for layer in layers)
    stats: dict[str, int] = {}
    for blob, _ in blobs:
        for key, value in layer_stats(blob).items():
            stats[key] = stats.get(key, 0) + value
    members, uncompressed = stats["entries"], stats["uncompressed_bytes"]
    have_skopeo = shutil.which("skopeo") is not None
    have_docker = docker_available()
    notes = []
    if not have_skopeo:
        notes.append("skopeo not installed (apt-get install skopeo): skipped")
    if not have_docker:
        notes.append("no Docker daemon answers `docker info`: docker pull skipped; "
                     f"compared against the design budget of {DOCKER_BUDGET_S} s instead")

    times: dict[str, list[float]] = {"dockyard": [], "dockyard_no_overlap": [],
                                     "skopeo": [], "docker": [],
                                     "apply_layer": [], "inode_floor": []}
    profile_text = ""
    with run_registry() as registry:
        ref = f"{registry.host}/{REPO}:bookworm"
        t0 = time.perf_counter()
        push(ref, source, target)
        print(f"pushed {ref}: {len(layers)} layer(s), {compressed / 1e6:.1f} MB compressed, "
              f"{uncompressed / 1e6:.1f} MB / {members} entries uncompressed "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        dockyard_pull(ref, work, 0)  # warm-up: imports, registry page cache
        for run in range(1, args.runs + 1):
            times["dockyard"].append(dockyard_pull(ref, work, run))
            times["dockyard_no_overlap"].append(dockyard_pull(ref, work, run, overlap=False))
            if have_skopeo:
                times["skopeo"].append(skopeo_copy(ref, work, run))
            if have_docker:
                times["docker"].append(docker_pull(ref))
            total = 0.0
            for blob, layer in blobs:
                elapsed, _ = apply_alone(blob, layer.media_type, work, run)
                total += elapsed
            times["apply_layer"].append(total)
            times["inode_floor"].append(inode_floor(work, run, stats))
            print(f"run {run}: " + ", ".join(f"{k} {v[-1]:.3f} s"
                                             for k, v in times.items() if v), flush=True)
        if args.profile:
            profile_text = profile_pull(ref, work)

    med = {k: median(v) for k, v in times.items() if v}
    docker_ref = med.get("docker", DOCKER_BUDGET_S)
    data = {
        "image": {"layers": len(layers), "compressed_bytes": compressed, **stats},
        "workdir": args.workdir,
        "runs": args.runs,
        "times_s": times,
        "median_s": med,
        "ratios": {
            "dockyard_vs_skopeo": med["dockyard"] / med["skopeo"] if "skopeo" in med else None,
            "dockyard_vs_docker": med["dockyard"] / docker_ref,
            "docker_reference": "measured" if "docker" in med else "design budget",
        },
        "apply_layer": {
            "mb_per_s_uncompressed": uncompressed / 1e6 / med["apply_layer"],
            "mb_per_s_compressed": compressed / 1e6 / med["apply_layer"],
            "files_per_s": members / med["apply_layer"],
        },
        "target": {"ratio": TARGET_RATIO, "met": med["dockyard"] / docker_ref <= TARGET_RATIO},
        "notes": notes,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                 "kernel": platform.release()},
    }
    lines = [
        f"pull benchmark: debian bookworm minbase, {len(layers)} layer(s), "
        f"{compressed / 1e6:.1f} MB gzip / {uncompressed / 1e6:.1f} MB tar, {members} entries",
        f"runs: {args.runs} (medians; interleaved; loopback docker-registry; "
        f"stores and snapshots under {args.workdir})",
        "",
    ]
    for name in ("dockyard", "dockyard_no_overlap", "skopeo", "docker", "apply_layer",
                 "inode_floor"):
        if name in med:
            lines.append(f"  {name:<20} {med[name]:7.3f} s   (runs: "
                         + ", ".join(f"{t:.3f}" for t in times[name]) + ")")
    ratios = data["ratios"]
    lines.append("")
    if ratios["dockyard_vs_skopeo"] is not None:
        lines.append(f"  dockyard / skopeo (download only)   {ratios['dockyard_vs_skopeo']:.2f}")
    lines.append(f"  dockyard / docker ({ratios['docker_reference']} {docker_ref:.2f} s)"
                 f"   {ratios['dockyard_vs_docker']:.2f}   target <= {TARGET_RATIO}: "
                 + ("met" if data["target"]["met"] else "NOT met"))
    al = data["apply_layer"]
    lines.append(f"  apply_layer: {al['mb_per_s_uncompressed']:.0f} MB/s uncompressed "
                 f"({al['mb_per_s_compressed']:.0f} MB/s compressed), "
                 f"{al['files_per_s']:.0f} files/s")
    if "inode_floor" in med:
        lines.append(f"  inode floor here: {med['inode_floor']:.2f} s to create "
                     f"{stats['files']} files + {stats['dirs']} dirs + {stats['symlinks']} "
                     f"symlinks empty; dockyard spends {med['dockyard'] - med['inode_floor']:.2f}"
                     " s above it")
    lines += [f"  note: {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    txt, js = write_results("pull", text, data)
    print(f"wrote {txt} and {js}")
    if profile_text:
        path = txt.parent / "pull-profile.txt"
        path.write_text(profile_text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
