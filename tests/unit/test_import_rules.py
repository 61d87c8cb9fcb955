"""DESIGN.md's import rules, checked on the source: imports go downward only."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "dockyard"

# package -> the dockyard packages it may import (besides itself).
SHARED = {"errdefs", "record", "linux", "__init__"}
ALLOWED = {
    "linux": set(),
    "runtime": {"linux"},
    "image": {"linux"},
    "shim": {"runtime", "linux"},
    "containerd": {"image", "runtime", "shim", "linux"},
    "registry": {"image", "linux"},
    "client": set(),
    "cli": {"client"},
    "compose": {"client"},
    "engine": {"containerd", "image", "linux", "runtime", "client"},
    "demo": {"image", "runtime", "containerd", "shim", "linux", "client"},
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "dockyard" and len(parts) > 1:
                found.add(parts[1])
    return found


def _package_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0].removesuffix(".py")


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_downward_only(path: pathlib.Path) -> None:
    package = _package_of(path)
    if package in SHARED or "/api/" in str(path):
        return
    allowed = ALLOWED.get(package, set()) | SHARED | {package}
    bad = _imports(path) - allowed
    assert not bad, f"{path.relative_to(ROOT)} ({package}) imports {sorted(bad)}; allowed: {sorted(allowed)}"


def test_nothing_imports_cli_or_engine() -> None:
    for path in ROOT.rglob("*.py"):
        package = _package_of(path)
        if package in ("cli", "engine"):
            continue
        assert not _imports(path) & {"cli", "engine"}, path
