"""Session-wide test setup: markers that skip cleanly, shared fixtures.

Fixture modules live in tests/fixtures/ and are loaded as plugins:
  busybox    a busybox rootfs / OCI bundle built from the host's busybox-static
  leakcheck  fails a test that leaves a mount, cgroup, process or netns behind
  registry   Debian's docker-registry on 127.0.0.1 (plain, htpasswd, token auth)
  containerd dockyard-containerd and Debian's containerd, driven with ctr
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.session",
    "tests.fixtures.busybox",
    "tests.fixtures.leakcheck",
    "tests.fixtures.registry",
    "tests.fixtures.containerd",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    not_root = os.geteuid() != 0
    for item in items:
        if not_root and item.get_closest_marker("requires_root"):
            item.add_marker(pytest.mark.skip(reason="needs root on the real kernel"))
