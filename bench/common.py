"""Shared benchmark plumbing: a loopback docker-registry, timing, result files.

The registry starter mirrors tests/fixtures/registry.py without pytest, so a
benchmark can run as a plain script. Everything it starts is stopped by pid
and its temp directory removed when the context exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REGISTRY_BINARY = "/usr/bin/docker-registry"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Registry:
    host: str  # "127.0.0.1:PORT"
    root: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(url: str, process: subprocess.Popen, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {process.returncode}:\n"
                               + log_path.read_text(errors="replace")[-2000:])
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url + "/v2/", timeout=1)
            return
        time.sleep(0.05)
    raise RuntimeError("docker-registry did not start listening within 15 s")


@contextlib.contextmanager
def run_registry() -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1 with filesystem storage."""
    if not os.access(REGISTRY_BINARY, os.X_OK):
        raise SystemExit(f"{REGISTRY_BINARY} not installed: apt-get install docker-registry")
    tmp = Path(tempfile.mkdtemp(prefix=f"dockyard-bench-registry-{os.getpid()}-"))
    process = None
    try:
        port = free_port()
        config = {
            "version": 0.1,
            # The access log costs the registry time on every request; the
            # benchmark measures the client.
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(tmp / "data")}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
        }
        (tmp / "config.yml").write_text(json.dumps(config))  # JSON is valid YAML
        log_path = tmp / "registry.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([REGISTRY_BINARY, "serve", str(tmp / "config.yml")],
                                       stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        registry = Registry(f"127.0.0.1:{port}", tmp)
        _wait_listening(registry.url, process, log_path)
        yield registry
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def drop_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_results(name: str, text: str, data: dict) -> tuple[Path, Path]:
    """bench/results/<name>.txt and .json (the directory is gitignored)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    txt, js = RESULTS_DIR / f"{name}.txt", RESULTS_DIR / f"{name}.json"
    txt.write_text(text)
    js.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return txt, js
