"""Platforms ("linux/arm64/v8"): parsing, normalisation, matching.

Names follow Go's GOOS/GOARCH as images do. Matching follows containerd's
"only this platform and what it can run" order: an arm64 host also takes
arm/v8..v5 images, an amd64 host takes lower amd64 micro-architecture
levels and then 386.
"""

from __future__ import annotations

import platform as _host
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dockyard import errdefs
from dockyard.image.core import Descriptor

_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux",
    "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows",
})
_KNOWN_ARCH = frozenset({
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle",
    "ppc64", "ppc64le", "riscv64", "s390x", "wasm",
    # host spellings normalised below
    "x86_64", "x86-64", "aarch64", "armhf", "armel", "i386", "i686",
})


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return format_platform(self)

    def to_json(self) -> dict:
        out: dict = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        return out

    @classmethod
    def from_json(cls, raw: dict) -> Platform:
        return cls(
            os=raw.get("os", ""),
            architecture=raw.get("architecture", ""),
            variant=raw.get("variant", "") or "",
            os_version=raw.get("os.version", "") or "",
            os_features=tuple(raw.get("os.features") or ()),
        )

    def normalized(self) -> Platform:
        return normalize(self)


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch in ("i386", "i686", "386"):
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        # Docker reports arm64 hosts as arm64/v8; images often omit it.
        if variant in ("", "8", "v8", "v8.0"):
            return "arm64", "v8"
        if variant in ("9", "9.0", "v9.0"):
            return "arm64", "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
        return "arm", variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    os_name = p.os.lower()
    if os_name == "macos":
        os_name = "darwin"
    arch, variant = _normalize_arch(p.architecture, p.variant)
    return Platform(os_name, arch, variant, p.os_version, tuple(p.os_features))


def format_platform(p: Platform) -> str:
    parts = [p.os or "unknown", p.architecture or "unknown"]
    if p.variant:
        parts.append(p.variant)
    return "/".join(parts)


def default_platform() -> Platform:
    """The host's platform, as Docker reports it (e.g. linux/arm64/v8)."""
    machine = _host.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv8l": ("arm", "v8"),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "armv5tel": ("arm", "v5"),
        "i386": ("386", ""),
        "i686": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
        "loongarch64": ("loong64", ""),
        "mips64": ("mips64le", ""),
    }.get(machine, (machine, ""))
    return normalize(Platform("linux", arch, variant))


def parse_platform(spec: str) -> Platform:
    """Parse "os[/arch[/variant]]", or a bare arch or os, as containerd does."""
    if not spec or any(not part for part in spec.split("/")) or spec.count("/") > 2:
        raise errdefs.InvalidArgument(
            f"invalid platform {spec!r}: expected os[/arch[/variant]], e.g. linux/arm64/v8"
        )
    parts = [p.strip().lower() for p in spec.split("/")]
    if len(parts) == 1:
        # A single word is an OS (with the host's arch) or an arch (on linux).
        word = parts[0]
        if word in _KNOWN_OS or word == "macos":
            host = default_platform()
            return normalize(Platform(word, host.architecture, host.variant))
        if word in _KNOWN_ARCH:
            return normalize(Platform("linux", word))
        raise errdefs.InvalidArgument(
            f"invalid platform {spec!r}: unknown operating system or architecture"
        )
    os_name, arch = parts[0], parts[1]
    variant = parts[2] if len(parts) == 3 else ""
    if os_name not in _KNOWN_OS and os_name != "macos":
        raise errdefs.InvalidArgument(f"invalid platform {spec!r}: unknown operating system {os_name!r}")
    if arch not in _KNOWN_ARCH:
        raise errdefs.InvalidArgument(f"invalid platform {spec!r}: unknown architecture {arch!r}")
    return normalize(Platform(os_name, arch, variant))


def compatible_platforms(p: Platform) -> list[Platform]:
    """p and the platforms it can also run, best first."""
    p = normalize(p)
    out = [p]

    def same_os(arch: str, variant: str = "") -> Platform:
        return Platform(p.os, arch, variant, p.os_version, p.os_features)

    if p.architecture == "amd64":
        level = _variant_number(p.variant)
        if level is not None and level > 1:
            out += [same_os("amd64", f"v{n}" if n > 1 else "") for n in range(level - 1, 0, -1)]
        out.append(same_os("386"))
    elif p.architecture == "arm64":
        if p.variant not in ("v8", ""):
            out.append(same_os("arm64", "v8"))
        out += [same_os("arm", f"v{n}") for n in (8, 7, 6, 5)]
    elif p.architecture == "arm":
        level = _variant_number(p.variant)
        if level is not None:
            out += [same_os("arm", f"v{n}") for n in range(level - 1, 4, -1)]
    return out


def _variant_number(variant: str) -> int | None:
    try:
        return int(variant.removeprefix("v").split(".")[0])
    except ValueError:
        return None


def matches(want: Platform, have: Platform) -> bool:
    """True if an image built for `have` is exactly the normalised `want`."""
    a, b = normalize(want), normalize(have)
    if (a.os, a.architecture, a.variant) != (b.os, b.architecture, b.variant):
        return False
    return not (a.os == "windows" and a.os_version and b.os_version
                and not b.os_version.startswith(_windows_build(a.os_version)))


def _windows_build(version: str) -> str:
    return ".".join(version.split(".")[:3])


def rank(want: Platform, have: Platform) -> int | None:
    """Preference of `have` for a host `want` (0 best), None if it cannot run."""
    for i, candidate in enumerate(compatible_platforms(want)):
        if matches(candidate, have):
            return i
    return None


def select_manifest(manifests: Sequence[Descriptor] | Iterable[Descriptor] | object,
                    platform: Platform | str | None = None) -> Descriptor:
    """Pick the best entry of an index/manifest list for a platform.

    Accepts an Index (anything with .manifests) or a sequence of descriptors.
    Ties keep index order, as Docker does. Raises NotFound with Docker's text.
    """
    want = default_platform() if platform is None else (
        parse_platform(platform) if isinstance(platform, str) else normalize(platform)
    )
    entries = list(getattr(manifests, "manifests", manifests))
    best: tuple[int, int] | None = None
    chosen: Descriptor | None = None
    for position, desc in enumerate(entries):
        if not desc.platform:
            continue
        r = rank(want, Platform.from_json(desc.platform))
        if r is not None and (best is None or (r, position) < best):
            best, chosen = (r, position), desc
    if chosen is None:
        raise errdefs.NotFound(
            f"no matching manifest for {format_platform(want)} in the manifest list entries"
        )
    return chosen
