"""dockyard-runc's fast parser for the hot commands must agree with argparse,
and hand everything unusual to argparse."""

from __future__ import annotations

import pytest

from dockyard.runtime.cli import _fast_parse, _parser

AGREE = [
    ["create", "c1"],
    ["create", "--bundle", "/b", "--pid-file", "/p", "c1"],
    ["--root", "/r", "create", "-b", "/b", "--console-socket=/s", "c1"],
    ["--log", "/l", "--log-format", "json", "run", "-d", "--bundle", "/b", "c1"],
    ["run", "--preserve-fds", "2", "--no-pivot", "--keep", "c1"],
    ["run", "--preserve-fds=1", "c1"],
    ["--systemd-cgroup", "start", "c1"],
    ["state", "c1"],
    ["delete", "-f", "c1"],
    ["--debug", "delete", "--force", "c1"],
    ["create", "c1", "--bundle", "/b"],
]

FALL_BACK = [
    [], ["--help"], ["create", "--help"], ["create"], ["create", "a", "b"],
    ["create", "--bund", "/b", "c1"], ["create", "--bundle"], ["create", "--bundle", "-x", "c1"],
    ["run", "--preserve-fds", "x", "c1"], ["--log-format", "yaml", "state", "c1"],
    ["kill", "c1", "KILL"], ["exec", "c1", "ls"], ["delete", "--force=1", "c1"],
    ["state", "--root", "/r", "c1"],
]


@pytest.mark.parametrize("argv", AGREE, ids=" ".join)
def test_fast_parser_agrees_with_argparse(argv: list[str]) -> None:
    fast = _fast_parse(argv)
    assert fast is not None
    assert vars(fast) == vars(_parser().parse_args(argv))


@pytest.mark.parametrize("argv", FALL_BACK, ids=lambda a: " ".join(a) or "(empty)")
def test_unusual_arguments_go_to_argparse(argv: list[str]) -> None:
    assert _fast_parse(argv) is None
