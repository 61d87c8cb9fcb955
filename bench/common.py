"""Shared benchmark plumbing: a loopback docker-registry, timing, result files.

The registry is started by the same code as the tests' fixture
(tests/fixtures/registry.py); everything it starts is stopped by pid and its
temp directory removed when the context exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for tests/
from tests.fixtures.registry import REGISTRY_BINARY, RegistryServer  # noqa: E402
from tests.fixtures.registry import run_registry as _run_registry  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def run_registry() -> Iterator[RegistryServer]:
    """Debian's docker-registry on 127.0.0.1, as the tests start it, without
    the access log (the benchmark measures the client)."""
    if not os.access(REGISTRY_BINARY, os.X_OK):
        raise SystemExit(f"{REGISTRY_BINARY} not installed: apt-get install docker-registry")
    with _run_registry(access_log=False) as server:
        yield server


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
