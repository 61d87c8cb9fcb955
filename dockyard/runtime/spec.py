"""OCI runtime-spec config.json → frozen dataclasses, validated.

No syscall happens here: `load_bundle` reads and checks the bundle, and every
problem is an InvalidArgument naming the field path, so nothing is created
for a config that can never run. Sub-objects owned by other modules (cgroup
resources, seccomp, capabilities, rlimits) are kept as their raw dicts here
and parsed by those modules in `validate`.
"""

from __future__ import annotations

import os

from dockyard import errdefs
from dockyard.record import field, record
from dockyard.runtime import fastjson

# typing costs ~4 ms of start-up on `dockyard-runc run`; annotations only need it
# for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

# Mount option → (flag, clear?) as runc understands them.
_MS = {
    "ro": (1, False), "rw": (1, True),
    "nosuid": (2, False), "suid": (2, True),
    "nodev": (4, False), "dev": (4, True),
    "noexec": (8, False), "exec": (8, True),
    "sync": (16, False), "async": (16, True),
    "remount": (32, False),
    "mand": (64, False), "nomand": (64, True),
    "dirsync": (128, False),
    "nosymfollow": (256, False), "symfollow": (256, True),
    "noatime": (1024, False), "atime": (1024, True),
    "nodiratime": (2048, False), "diratime": (2048, True),
    "bind": (4096, False),
    "rbind": (4096 | 16384, False),
    "relatime": (1 << 21, False), "norelatime": (1 << 21, True),
    "strictatime": (1 << 24, False), "nostrictatime": (1 << 24, True),
    "lazytime": (1 << 25, False), "nolazytime": (1 << 25, True),
    "silent": (32768, False), "loud": (32768, True),
    "defaults": (0, False),
}
_PROPAGATION = {
    "private": 1 << 18, "rprivate": (1 << 18) | 16384,
    "shared": 1 << 20, "rshared": (1 << 20) | 16384,
    "slave": 1 << 19, "rslave": (1 << 19) | 16384,
    "unbindable": 1 << 17, "runbindable": (1 << 17) | 16384,
}
# Options that only make sense to us (not to mount(2)) and are dropped.
_IGNORED_OPTIONS = {"tmpcopyup", "idmap", "ridmap", "recursive"}


def _invalid(path: str, message: str) -> errdefs.InvalidArgument:
    return errdefs.InvalidArgument(f"config.json: {path}: {message}")


@record(frozen=True)
class Root:
    path: str  # absolute (resolved against the bundle)
    readonly: bool = False


@record(frozen=True)
class User:
    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()


@record(frozen=True)
class Process:
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    user: User = field(default_factory=User)
    terminal: bool = False
    console_size: tuple[int, int] | None = None  # (height, width)
    capabilities: dict | None = None
    rlimits: tuple[dict, ...] = ()
    no_new_privileges: bool = False
    apparmor_profile: str = ""
    selinux_label: str = ""
    oom_score_adj: int | None = None

    @classmethod
    def from_oci(cls, raw: dict, where: str = "process") -> Process:
        if not isinstance(raw, dict):
            raise _invalid(where, "must be an object")
        args = raw.get("args") or []
        if not args or not all(isinstance(a, str) for a in args):
            raise _invalid(f"{where}.args", "must be a non-empty list of strings")
        cwd = raw.get("cwd", "/") or "/"
        if not cwd.startswith("/"):
            raise _invalid(f"{where}.cwd", f"{cwd!r} must be an absolute path")
        user_raw = raw.get("user") or {}
        try:
            user = User(
                uid=int(user_raw.get("uid", 0)),
                gid=int(user_raw.get("gid", 0)),
                umask=None if user_raw.get("umask") is None else int(user_raw["umask"]),
                additional_gids=tuple(int(g) for g in user_raw.get("additionalGids") or ()),
            )
        except (TypeError, ValueError) as exc:
            raise _invalid(f"{where}.user", f"uid, gid and additionalGids must be integers ({exc})") from exc
        size = raw.get("consoleSize")
        console_size = (int(size.get("height", 0)), int(size.get("width", 0))) if size else None
        env = raw.get("env") or []
        if not all(isinstance(e, str) for e in env):
            raise _invalid(f"{where}.env", "must be a list of strings")
        oom = raw.get("oomScoreAdj")
        if oom is not None and not -1000 <= int(oom) <= 1000:
            raise _invalid(f"{where}.oomScoreAdj", f"{oom} is outside -1000..1000")
        return cls(
            args=tuple(args),
            env=tuple(env),
            cwd=cwd,
            user=user,
            terminal=bool(raw.get("terminal", False)),
            console_size=console_size,
            capabilities=raw.get("capabilities"),
            rlimits=tuple(raw.get("rlimits") or ()),
            no_new_privileges=bool(raw.get("noNewPrivileges", False)),
            apparmor_profile=raw.get("apparmorProfile", "") or "",
            selinux_label=raw.get("selinuxLabel", "") or "",
            oom_score_adj=None if oom is None else int(oom),
        )

    def to_oci(self) -> dict:
        out: dict[str, Any] = {
            "terminal": self.terminal,
            "user": {"uid": self.user.uid, "gid": self.user.gid},
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
        }
        if self.user.additional_gids:
            out["user"]["additionalGids"] = list(self.user.additional_gids)
        if self.user.umask is not None:
            out["user"]["umask"] = self.user.umask
        if self.capabilities is not None:
            out["capabilities"] = self.capabilities
        if self.rlimits:
            out["rlimits"] = list(self.rlimits)
        if self.no_new_privileges:
            out["noNewPrivileges"] = True
        if self.console_size:
            out["consoleSize"] = {"height": self.console_size[0], "width": self.console_size[1]}
        if self.oom_score_adj is not None:
            out["oomScoreAdj"] = self.oom_score_adj
        if self.apparmor_profile:
            out["apparmorProfile"] = self.apparmor_profile
        if self.selinux_label:
            out["selinuxLabel"] = self.selinux_label
        return out


@record(frozen=True)
class MountSpec:
    destination: str
    type: str
    source: str
    options: tuple[str, ...]
    flags: int  # MS_* set for mount(2)
    clear_flags: int  # MS_* the options explicitly turned off
    propagation: tuple[int, ...]  # applied after the mount, in order
    data: str  # remaining options, comma-joined, for the filesystem

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or bool(self.flags & 4096)


@record(frozen=True)
class Namespace:
    type: str
    path: str = ""


@record(frozen=True)
class IDMapping:
    container_id: int
    host_id: int
    size: int


@record(frozen=True)
class Device:
    path: str
    type: str  # c, b, u, p
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int


@record(frozen=True)
class Hook:
    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer",
              "poststart", "poststop")


@record(frozen=True)
class Linux:
    namespaces: tuple[Namespace, ...] = ()
    uid_mappings: tuple[IDMapping, ...] = ()
    gid_mappings: tuple[IDMapping, ...] = ()
    devices: tuple[Device, ...] = ()
    cgroups_path: str = ""
    resources: dict | None = None
    sysctl: dict[str, str] = field(default_factory=dict)
    seccomp: dict | None = None
    rootfs_propagation: str = ""
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    mount_label: str = ""

    def namespace(self, kind: str) -> Namespace | None:
        for ns in self.namespaces:
            if ns.type == kind:
                return ns
        return None


@record(frozen=True)
class Spec:
    oci_version: str
    bundle: str
    root: Root
    process: Process | None
    hostname: str
    domainname: str
    mounts: tuple[MountSpec, ...]
    hooks: dict[str, tuple[Hook, ...]]
    linux: Linux
    annotations: dict[str, str]
    raw: dict  # the config as read, for hooks and `state`


def parse_mount_options(options: list[str]) -> tuple[int, int, tuple[int, ...], str]:
    flags = clear = 0
    propagation: list[int] = []
    data: list[str] = []
    for opt in options:
        if opt in _MS:
            bit, turn_off = _MS[opt]
            if turn_off:
                flags &= ~bit
                clear |= bit
            else:
                flags |= bit
        elif opt in _PROPAGATION:
            propagation.append(_PROPAGATION[opt])
        elif opt in _IGNORED_OPTIONS:
            continue
        else:
            data.append(opt)
    return flags, clear, tuple(propagation), ",".join(data)


def _parse_mount(raw: Any, index: int) -> MountSpec:
    where = f"mounts[{index}]"
    if not isinstance(raw, dict):
        raise _invalid(where, "must be an object")
    dest = raw.get("destination")
    if not isinstance(dest, str) or not dest.startswith("/"):
        raise _invalid(f"{where}.destination", f"{dest!r} must be an absolute path")
    options = raw.get("options") or []
    if not all(isinstance(o, str) for o in options):
        raise _invalid(f"{where}.options", "must be a list of strings")
    mtype = raw.get("type") or ""
    source = raw.get("source") or ""
    flags, clear, propagation, data = parse_mount_options(options)
    if mtype == "bind" or flags & 4096:
        if not source:
            raise _invalid(f"{where}.source", f"bind mount on {dest} needs a source")
        mtype = "bind"
    elif not mtype:
        raise _invalid(f"{where}.type", f"mount on {dest} needs a type")
    return MountSpec(destination=os.path.normpath(dest), type=mtype, source=source,
                     options=tuple(options), flags=flags, clear_flags=clear,
                     propagation=propagation, data=data)


def _parse_hooks(raw: Any) -> dict[str, tuple[Hook, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _invalid("hooks", "must be an object")
    hooks: dict[str, tuple[Hook, ...]] = {}
    for name, entries in raw.items():
        if name not in HOOK_NAMES:
            raise _invalid(f"hooks.{name}", f"unknown hook; known: {', '.join(HOOK_NAMES)}")
        parsed = []
        for i, entry in enumerate(entries or []):
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str) or not path.startswith("/"):
                raise _invalid(f"hooks.{name}[{i}].path", f"{path!r} must be an absolute path")
            timeout = entry.get("timeout")
            if timeout is not None and int(timeout) <= 0:
                raise _invalid(f"hooks.{name}[{i}].timeout", "must be a positive number of seconds")
            parsed.append(Hook(path=path, args=tuple(entry.get("args") or ()),
                               env=tuple(entry.get("env") or ()),
                               timeout=None if timeout is None else int(timeout)))
        hooks[name] = tuple(parsed)
    return hooks


def _parse_mappings(raw: Any, where: str) -> tuple[IDMapping, ...]:
    out = []
    for i, m in enumerate(raw or []):
        try:
            out.append(IDMapping(int(m["containerID"]), int(m["hostID"]), int(m["size"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"{where}[{i}]", "needs integer containerID, hostID and size") from exc
        if out[-1].size <= 0:
            raise _invalid(f"{where}[{i}].size", "must be positive")
    return tuple(out)


def _parse_linux(raw: Any) -> Linux:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _invalid("linux", "must be an object")
    namespaces = []
    seen = set()
    for i, ns in enumerate(raw.get("namespaces") or []):
        kind = ns.get("type") if isinstance(ns, dict) else None
        if kind not in NAMESPACE_TYPES:
            raise _invalid(f"linux.namespaces[{i}].type",
                           f"unknown namespace type {kind!r}; known: {', '.join(NAMESPACE_TYPES)}")
        if kind in seen:
            raise _invalid(f"linux.namespaces[{i}]", f"namespace {kind!r} given twice")
        seen.add(kind)
        path = ns.get("path") or ""
        if path and not os.path.exists(path):
            raise _invalid(f"linux.namespaces[{i}].path", f"{kind} namespace {path} does not exist")
        namespaces.append(Namespace(kind, path))
    devices = []
    for i, d in enumerate(raw.get("devices") or []):
        where = f"linux.devices[{i}]"
        path = d.get("path", "")
        if not path.startswith("/dev/"):
            raise _invalid(f"{where}.path", f"{path!r} must be under /dev")
        dtype = d.get("type")
        if dtype not in ("c", "b", "u", "p"):
            raise _invalid(f"{where}.type", f"{dtype!r} must be one of c, b, u, p")
        devices.append(Device(path=path, type=dtype, major=int(d.get("major", 0)),
                              minor=int(d.get("minor", 0)),
                              file_mode=int(d.get("fileMode", 0o666)),
                              uid=int(d.get("uid", 0)), gid=int(d.get("gid", 0))))
    propagation = raw.get("rootfsPropagation", "") or ""
    if propagation and propagation not in _PROPAGATION:
        raise _invalid("linux.rootfsPropagation", f"unknown propagation {propagation!r}")
    sysctl = raw.get("sysctl") or {}
    for key in sysctl:
        if "/" in key or ".." in key:
            raise _invalid(f"linux.sysctl.{key}", "is not a valid sysctl name")
    return Linux(
        namespaces=tuple(namespaces),
        uid_mappings=_parse_mappings(raw.get("uidMappings"), "linux.uidMappings"),
        gid_mappings=_parse_mappings(raw.get("gidMappings"), "linux.gidMappings"),
        devices=tuple(devices),
        cgroups_path=raw.get("cgroupsPath", "") or "",
        resources=raw.get("resources"),
        sysctl={str(k): str(v) for k, v in sysctl.items()},
        seccomp=raw.get("seccomp"),
        rootfs_propagation=propagation,
        masked_paths=tuple(raw.get("maskedPaths") or ()),
        readonly_paths=tuple(raw.get("readonlyPaths") or ()),
        mount_label=raw.get("mountLabel", "") or "",
    )


def parse_spec(raw: Any, bundle: str) -> Spec:
    """Turn a decoded config.json into a Spec, or raise InvalidArgument."""
    if not isinstance(raw, dict):
        raise _invalid("(top level)", "must be a JSON object")
    root_raw = raw.get("root")
    if not isinstance(root_raw, dict) or not root_raw.get("path"):
        raise _invalid("root.path", "is required (the container's root filesystem)")
    root_path = os.path.join(bundle, root_raw["path"])
    if not os.path.isdir(root_path):
        raise _invalid("root.path", f"{root_path} is not a directory")
    process = Process.from_oci(raw["process"]) if raw.get("process") is not None else None
    linux = _parse_linux(raw.get("linux"))
    if (linux.uid_mappings or linux.gid_mappings) and not linux.namespace("user"):
        raise _invalid("linux.uidMappings", "given without a user namespace")
    user_ns = linux.namespace("user")
    if user_ns and not user_ns.path and not (linux.uid_mappings and linux.gid_mappings):
        raise _invalid("linux.uidMappings", "a new user namespace needs uidMappings and gidMappings")
    hostname = raw.get("hostname", "") or ""
    uts = linux.namespace("uts")
    if hostname and not (uts and not uts.path):
        raise _invalid("hostname", "setting a hostname needs a new uts namespace")
    return Spec(
        oci_version=raw.get("ociVersion", ""),
        bundle=bundle,
        root=Root(path=os.path.realpath(root_path), readonly=bool(root_raw.get("readonly"))),
        process=process,
        hostname=hostname,
        domainname=raw.get("domainname", "") or "",
        mounts=tuple(_parse_mount(m, i) for i, m in enumerate(raw.get("mounts") or [])),
        hooks=_parse_hooks(raw.get("hooks")),
        linux=linux,
        annotations=dict(raw.get("annotations") or {}),
        raw=raw,
    )


def load_bundle(bundle: str) -> Spec:
    """Read <bundle>/config.json; every problem is an InvalidArgument."""
    bundle = os.path.abspath(bundle)
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = fastjson.loads(f.read())
    except FileNotFoundError as exc:
        raise errdefs.InvalidArgument(f"bundle {bundle}: config.json not found") from exc
    except ValueError as exc:  # json.JSONDecodeError, or not UTF-8
        raise errdefs.InvalidArgument(f"{path}: invalid JSON: {exc}") from exc
    return parse_spec(raw, bundle)
