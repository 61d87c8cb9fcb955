"""`dockyard-runc features`: what this runtime implements (runtime-spec features.json)."""

from __future__ import annotations

from dockyard.runtime.spec import _MS, _PROPAGATION, HOOK_NAMES, NAMESPACE_TYPES


def features() -> dict:
    from dockyard.runtime.linux import capabilities, seccomp

    try:
        seccomp_info = {
            "enabled": True,
            "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                        "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                        "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
            "operators": sorted(seccomp.OPERATORS),
            "archs": sorted(seccomp.ARCHITECTURES),
            "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                           "SECCOMP_FILTER_FLAG_LOG"],
            "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                               "SECCOMP_FILTER_FLAG_LOG"],
        }
    except Exception:  # noqa: BLE001 - libseccomp missing: report disabled
        seccomp_info = {"enabled": False}
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.0.2",
        "hooks": list(HOOK_NAMES),
        "mountOptions": sorted(set(_MS) | set(_PROPAGATION)),
        "linux": {
            "namespaces": [n for n in NAMESPACE_TYPES],
            "capabilities": list(capabilities.CAPABILITY_NAMES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False,
                       "rdma": False},
            "seccomp": seccomp_info,
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.dockyard.runtime": "dockyard-runc"},
    }
