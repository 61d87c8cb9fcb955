"""Registry credentials from the Docker CLI's config file.

Reads $DOCKER_CONFIG/config.json (default ~/.docker/config.json) the way the
docker CLI does: a per-registry helper in `credHelpers` wins, then the default
helper in `credsStore`, then the `auths` section (`auth` is base64 of
"user:password"; separate `username`/`password` fields are accepted too).
Helpers speak the docker-credential-helpers protocol: `docker-credential-<name>
get` reads the server URL on stdin and prints {"ServerURL","Username","Secret"}.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dockyard import errdefs

# The key the docker CLI stores Docker Hub credentials under.
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io"}
# A helper that answers Username "<token>" is handing out an identity (refresh) token.
_IDENTITY_TOKEN_USER = "<token>"
_HELPER_TIMEOUT_S = 30


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = ""
    identity_token: str = ""  # OAuth refresh token, used instead of a password

    def __repr__(self) -> str:  # never print a secret into a log
        return f"Credentials(username={self.username!r}, password=***)"


def config_dir() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".docker"


def normalize_host(server: str) -> str:
    """"https://index.docker.io/v1/" → "docker.io"; "http://h:5000/x" → "h:5000"."""
    host = server.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme):]
    host = host.split("/", 1)[0]
    if host in _DOCKER_HUB_HOSTS:
        return "docker.io"
    return host


def helper_server_url(host: str) -> str:
    """What the docker CLI passes to a helper for this registry host."""
    return DOCKER_HUB_AUTH_KEY if normalize_host(host) == "docker.io" else host


class CredentialStore:
    """Looks up credentials for a registry host. Static entries (given by the
    caller, e.g. X-Registry-Auth of an API request) win over the config file."""

    def __init__(self, config_path: Path | None = None,
                 static: dict[str, Credentials] | None = None) -> None:
        self._config_path = config_path
        self._static = {normalize_host(k): v for k, v in (static or {}).items()}

    @property
    def config_path(self) -> Path:
        return self._config_path or config_dir() / "config.json"

    def _load(self) -> dict:
        path = self.config_path
        try:
            raw = path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise errdefs.Unavailable(f"cannot read docker config {path}: {exc}") from exc
        try:
            data = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise errdefs.InvalidArgument(
                f"docker config {path} is not valid JSON ({exc}); fix or remove it") from exc
        return data if isinstance(data, dict) else {}

    def get(self, host: str) -> Credentials | None:
        """Credentials for host, or None to go anonymous."""
        host = normalize_host(host)
        if host in self._static:
            return self._static[host]
        config = self._load()
        helper = (config.get("credHelpers") or {}).get(host)
        if helper is None and host == "docker.io":
            helper = (config.get("credHelpers") or {}).get(DOCKER_HUB_AUTH_KEY)
        helper = helper or config.get("credsStore")
        if helper:
            return run_helper(helper, helper_server_url(host))
        return _from_auths(config.get("auths") or {}, host, self.config_path)


def _from_auths(auths: dict, host: str, path: Path) -> Credentials | None:
    for key, entry in auths.items():
        if normalize_host(key) != host or not isinstance(entry, dict):
            continue
        username = entry.get("username") or ""
        password = entry.get("password") or ""
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=False).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise errdefs.InvalidArgument(
                    f"docker config {path}: auth for {key} is not base64 of user:password"
                ) from exc
            username, sep, password = decoded.partition(":")
            if not sep:
                raise errdefs.InvalidArgument(
                    f"docker config {path}: auth for {key} has no ':' between user and password")
        token = entry.get("identitytoken") or ""
        if username or password or token:
            return Credentials(username, password, token)
    return None


def run_helper(name: str, server_url: str) -> Credentials | None:
    """Ask docker-credential-<name> for server_url's credentials."""
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run([program, "get"], input=server_url.encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise errdefs.Unavailable(
            f"credential helper {program} is configured in the docker config but is not "
            f"installed; install it or remove credsStore/credHelpers") from exc
    except subprocess.TimeoutExpired as exc:
        raise errdefs.Unavailable(f"credential helper {program} did not answer in "
                                  f"{_HELPER_TIMEOUT_S}s") from exc
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in out.lower():
            return None
        err = proc.stderr.decode(errors="replace").strip()
        raise errdefs.Unavailable(f"credential helper {program} failed for {server_url}: "
                                  f"{out or err or f'exit status {proc.returncode}'}")
    try:
        answer = json.loads(out)
    except json.JSONDecodeError as exc:
        raise errdefs.Unavailable(
            f"credential helper {program} printed something that is not JSON") from exc
    username = answer.get("Username") or ""
    secret = answer.get("Secret") or ""
    if username == _IDENTITY_TOKEN_USER:
        return Credentials(identity_token=secret)
    return Credentials(username, secret)
