"""Capability names, OCI parsing and rlimit parsing (no process state is changed)."""

from __future__ import annotations

import resource

import pytest

from dockyard import errdefs
from dockyard.runtime.linux import capabilities as caps
from dockyard.runtime.linux import rlimits

ALL = frozenset(range(41))
SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def test_names_and_numbers():
    assert caps.cap_number("CAP_CHOWN") == 0
    assert caps.cap_number("net_bind_service") == 10
    assert caps.cap_number("CAP_SYS_RESOURCE") == 24
    assert caps.cap_number("CAP_CHECKPOINT_RESTORE") == 40
    assert len(caps.CAPABILITY_NAMES) == 41
    assert all(caps.cap_number(caps.cap_name(n)) == n for n in range(41))
    assert caps.cap_name(63) == "CAP_63"
    with pytest.raises(errdefs.InvalidArgument, match="CAP_FLY"):
        caps.cap_number("CAP_FLY")


def test_docker_default_mask():
    defaults = caps.docker_default_capabilities()
    assert len(defaults) == 14
    assert caps.to_mask(caps.cap_number(n) for n in defaults) == 0x00000000A80425FB


def test_from_oci_all_sets():
    spec = {name: caps.docker_default_capabilities() for name in SETS}
    parsed = caps.Capabilities.from_oci(spec, host_bounding=ALL)
    for name in SETS:
        assert caps.to_mask(getattr(parsed, name)) == 0xA80425FB
    assert parsed.warnings == ()
    assert parsed.names("ambient")[0] == "CAP_CHOWN"


def test_unknown_cap_names_field():
    with pytest.raises(errdefs.InvalidArgument, match=r"process.capabilities.effective\[1\].*"
                                                      "CAP_TELEPORT"):
        caps.Capabilities.from_oci({"effective": ["CAP_KILL", "CAP_TELEPORT"]}, ALL)


def test_cap_missing_from_host_is_dropped_with_warning():
    host = ALL - {24}
    parsed = caps.Capabilities.from_oci(
        {"bounding": ["CAP_SYS_RESOURCE", "CAP_KILL"], "permitted": ["CAP_SYS_RESOURCE"]}, host)
    assert parsed.bounding == {5}
    assert parsed.permitted == frozenset()
    assert len(parsed.warnings) == 1 and "CAP_SYS_RESOURCE" in parsed.warnings[0]


def test_ambient_needs_permitted_and_inheritable():
    parsed = caps.Capabilities.from_oci(
        {"permitted": ["CAP_KILL", "CAP_CHOWN"], "inheritable": ["CAP_KILL"],
         "ambient": ["CAP_KILL", "CAP_CHOWN"]}, ALL)
    assert parsed.ambient == {5}
    assert any("CAP_CHOWN" in w for w in parsed.warnings)


def test_host_bounding_set_reads_the_kernel():
    host = caps.host_bounding_set()
    assert host <= frozenset(range(caps.last_cap() + 1))
    effective, permitted, _ = caps.get_sets()
    assert effective & ~permitted == 0


def test_empty_spec():
    parsed = caps.Capabilities.from_oci(None, ALL)
    assert parsed == caps.Capabilities()


# --- rlimits -----------------------------------------------------------------

def test_rlimits_parse():
    limits = rlimits.parse_rlimits([
        {"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024},
        {"type": "RLIMIT_CORE", "hard": rlimits.UNLIMITED, "soft": 0},
    ])
    assert limits[0] == rlimits.Rlimit("RLIMIT_NOFILE", 2048, 1024)
    assert limits[0].resource_id == resource.RLIMIT_NOFILE
    assert limits[1].as_python() == (0, resource.RLIM_INFINITY)
    assert rlimits.parse_rlimits(None) == []


@pytest.mark.parametrize(("spec", "message"), [
    ([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}], r"rlimits\[0\].type.*RLIMIT_BOGUS"),
    ([{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 20}], r"soft limit 20.*above.*hard limit 10"),
    ([{"type": "RLIMIT_NOFILE", "hard": -1, "soft": 0}], r"rlimits\[0\].hard"),
    ([{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1},
      {"type": "RLIMIT_NOFILE", "hard": 2, "soft": 2}], "more than once"),
    ("nofile", "must be a list"),
])
def test_rlimits_invalid(spec, message):
    with pytest.raises(errdefs.InvalidArgument, match=message):
        rlimits.parse_rlimits(spec)


def test_current_rlimits_round_trip():
    current = rlimits.current_rlimits()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert current["RLIMIT_NOFILE"] == (soft, hard)
    assert set(current) == set(rlimits.RLIMIT_TYPES)


def test_host_bounding_set_matches_a_prctl_probe():
    """CapBnd from /proc/self/status is the same set PR_CAPBSET_READ reports."""
    from dockyard.linux import syscalls

    probed = {n for n in range(caps.last_cap() + 1)
              if syscalls.prctl(syscalls.PR_CAPBSET_READ, n) == 1}
    assert {caps.cap_number(c) if isinstance(c, str) else c
            for c in caps.host_bounding_set()} == probed
