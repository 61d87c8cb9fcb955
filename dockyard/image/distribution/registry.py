"""Where a registry domain is reached: endpoint resolution.

Docker Hub is named "docker.io" in references but served from
https://registry-1.docker.io, with official images under "library/"; its
configured mirrors are tried first. A registry is "insecure" when the daemon
config lists it (host, host:port or CIDR) or, as in Docker, when it is on the
loopback (127.0.0.0/8, ::1, localhost): for those dockyard tries HTTPS without
certificate verification and then plain HTTP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from dockyard import errdefs

DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_ENDPOINT = "https://registry-1.docker.io"
_DEFAULT_INSECURE = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class RegistryConfig:
    mirrors: tuple[str, ...] = ()  # for docker.io only, like dockerd's registry-mirrors
    insecure_registries: tuple[str, ...] = ()  # "host", "host:port" or a CIDR


@dataclass(frozen=True)
class Endpoint:
    url: str  # scheme://host[:port], no trailing slash
    host: str  # the domain as credentials and tokens know it ("docker.io", "h:5000")
    tls_verify: bool = True
    mirror: bool = False

    @property
    def is_https(self) -> bool:
        return self.url.startswith("https://")


def split_host_port(domain: str) -> tuple[str, str]:
    if domain.startswith("["):  # [::1]:5000
        host, _, rest = domain[1:].partition("]")
        return host, rest.lstrip(":")
    if domain.count(":") == 1:
        host, _, port = domain.partition(":")
        return host, port
    return domain, ""


def is_insecure(domain: str, config: RegistryConfig) -> bool:
    host, _ = split_host_port(domain)
    for entry in config.insecure_registries:
        entry = entry.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if entry in (domain, host):
            return True
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in (*_DEFAULT_INSECURE, *config.insecure_registries):
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return True
    return False


def repository_path(domain: str, path: str) -> str:
    """The repository name as the registry knows it: "alpine" on Docker Hub is
    "library/alpine"."""
    if domain == DOCKER_HUB_DOMAIN and "/" not in path:
        return "library/" + path
    return path


def resolve_endpoints(domain: str, config: RegistryConfig | None = None) -> list[Endpoint]:
    """Endpoints to try, in order, for a reference's domain."""
    config = config or RegistryConfig()
    if not domain:
        raise errdefs.InvalidArgument("registry domain is empty")
    if domain in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        endpoints = [Endpoint(m.rstrip("/"), DOCKER_HUB_DOMAIN, tls_verify=not m.startswith(
            "http://"), mirror=True) for m in config.mirrors]
        endpoints.append(Endpoint(DOCKER_HUB_ENDPOINT, DOCKER_HUB_DOMAIN))
        return endpoints
    if is_insecure(domain, config):
        return [Endpoint(f"https://{domain}", domain, tls_verify=False),
                Endpoint(f"http://{domain}", domain, tls_verify=False)]
    return [Endpoint(f"https://{domain}", domain)]
