"""Registry auth, credentials and endpoint resolution, without a registry:
challenge parsing, the token flow against a loopback token server, the Docker
config file and a real credential-helper executable."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from dockyard import errdefs
from dockyard.image.distribution.auth import Authenticator, parse_challenges
from dockyard.image.distribution.client import _retry_after
from dockyard.image.distribution.credentials import Credentials, CredentialStore
from dockyard.image.distribution.progress import ProgressEvent
from dockyard.image.distribution.registry import (
    RegistryConfig,
    is_insecure,
    repository_path,
    resolve_endpoints,
)

# ------------------------------------------------------------------ challenges


def test_parse_bearer_challenge():
    [challenge] = parse_challenges(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"')
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.example/token"
    assert challenge.params["service"] == "registry.example"
    assert challenge.params["scope"] == "repository:a/b:pull,push"


def test_parse_several_challenges_and_escapes():
    challenges = parse_challenges(
        'Basic realm="say \\"hi\\", please", Bearer realm=https://t/x , error=insufficient_scope')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].realm == 'say "hi", please'
    assert challenges[1].realm == "https://t/x"
    assert challenges[1].params["error"] == "insufficient_scope"
    assert parse_challenges("") == []


# ------------------------------------------------------------------ token server


class _TokenHandler(BaseHTTPRequestHandler):
    calls: list[dict] = []

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        auth = self.headers.get("Authorization", "")
        self.calls.append({"method": "GET", "query": query, "auth": auth})
        if auth and base64.b64decode(auth.split()[1]) != b"bob:secret":
            return self._reply(401, {"details": "bad password"})
        self._reply(200, {"token": f"tok-{len(self.calls)}", "expires_in": 300})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        form = parse_qs(self.rfile.read(length).decode())
        self.calls.append({"method": "POST", "form": form})
        self._reply(200, {"access_token": "oauth-tok", "expires_in": 300})


@pytest.fixture
def token_realm():
    _TokenHandler.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _unauthorized(realm: str) -> httpx.Response:
    return httpx.Response(401, headers={
        "WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})


SCOPE = ("repository:team/app:pull",)


def test_anonymous_token_flow_and_cache(token_realm):
    auth = Authenticator()
    assert auth.authorization("https://reg", "reg", SCOPE) is None  # no challenge yet
    assert auth.on_unauthorized("https://reg", "reg", _unauthorized(token_realm), SCOPE, None)
    header = auth.authorization("https://reg", "reg", SCOPE)
    assert header == "Bearer tok-1"
    [call] = _TokenHandler.calls
    assert call["auth"] == ""
    assert call["query"] == {"service": ["reg"], "scope": ["repository:team/app:pull"]}
    # cached per scope set; a new scope set fetches a new token
    assert auth.authorization("https://reg", "reg", SCOPE) == "Bearer tok-1"
    assert len(_TokenHandler.calls) == 1
    push_scope = ("repository:team/app:pull,push",)
    assert auth.authorization("https://reg", "reg", push_scope) == "Bearer tok-2"
    assert auth.token_requests == 2


def test_token_flow_with_password(token_realm):
    creds = CredentialStore(static={"reg": Credentials("bob", "secret")})
    auth = Authenticator(creds)
    auth.on_unauthorized("https://reg", "reg", _unauthorized(token_realm), SCOPE, None)
    assert auth.authorization("https://reg", "reg", SCOPE) == "Bearer tok-1"
    [call] = _TokenHandler.calls
    assert call["query"]["account"] == ["bob"]
    assert base64.b64decode(call["auth"].split()[1]) == b"bob:secret"


def test_token_server_refuses_wrong_password(token_realm):
    creds = CredentialStore(static={"reg": Credentials("bob", "wrong")})
    auth = Authenticator(creds)
    with pytest.raises(errdefs.Unauthorized, match="incorrect username or password"):
        auth.on_unauthorized("https://reg", "reg", _unauthorized(token_realm), SCOPE, None)


def test_identity_token_uses_oauth_refresh_grant(token_realm):
    creds = CredentialStore(static={"reg": Credentials(identity_token="refresh-me")})
    auth = Authenticator(creds)
    auth.on_unauthorized("https://reg", "reg", _unauthorized(token_realm), SCOPE, None)
    assert auth.authorization("https://reg", "reg", SCOPE) == "Bearer oauth-tok"
    [call] = _TokenHandler.calls
    assert call["form"]["grant_type"] == ["refresh_token"]
    assert call["form"]["refresh_token"] == ["refresh-me"]


def test_basic_challenge():
    response = httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
    anonymous = Authenticator()
    assert not anonymous.on_unauthorized("http://h", "h", response, SCOPE, None)
    creds = CredentialStore(static={"h": Credentials("u", "p")})
    auth = Authenticator(creds)
    assert auth.on_unauthorized("http://h", "h", response, SCOPE, None)
    sent = auth.authorization("http://h", "h", SCOPE)
    assert sent == "Basic " + base64.b64encode(b"u:p").decode()
    # the same credentials refused again: no point retrying
    assert not auth.on_unauthorized("http://h", "h", response, SCOPE, sent)


# ------------------------------------------------------------------ credentials


def _write_config(directory, data) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(data))


def test_auths_from_docker_config_env(tmp_path, monkeypatch):
    _write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colon").decode()},
        "http://127.0.0.1:5000/v2/": {"username": "u", "password": "p"},
    }})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    store = CredentialStore()
    assert store.get("docker.io") == Credentials("hub", "pw:with:colon")
    assert store.get("registry-1.docker.io") == Credentials("hub", "pw:with:colon")
    assert store.get("127.0.0.1:5000") == Credentials("u", "p")
    assert store.get("elsewhere.example") is None
    assert "pw" not in repr(store.get("docker.io"))


def test_missing_and_broken_config(tmp_path):
    assert CredentialStore(tmp_path / "absent.json").get("x") is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(errdefs.InvalidArgument, match="not valid JSON"):
        CredentialStore(tmp_path / "bad.json").get("x")


@pytest.fixture
def helper_dir(tmp_path, monkeypatch):
    """A real docker-credential-test executable on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker-credential-test"
    script.write_text("""#!/bin/sh
[ "$1" = get ] || exit 2
read -r server
case "$server" in
  reg.example) echo '{"ServerURL":"reg.example","Username":"helper-user","Secret":"s3"}' ;;
  https://index.docker.io/v1/) echo '{"ServerURL":"hub","Username":"<token>","Secret":"idt"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_creds_store_and_cred_helpers(helper_dir):
    config = helper_dir / "docker"
    _write_config(config, {"credsStore": "test", "auths": {"plain.example": {
        "auth": base64.b64encode(b"file:pw").decode()}}})
    store = CredentialStore(config / "config.json")
    assert store.get("reg.example") == Credentials("helper-user", "s3")
    assert store.get("docker.io") == Credentials(identity_token="idt")
    assert store.get("unknown.example") is None  # "credentials not found" is not an error

    _write_config(config, {"credHelpers": {"reg.example": "test"}, "auths": {"plain.example": {
        "auth": base64.b64encode(b"file:pw").decode()}}})
    store = CredentialStore(config / "config.json")
    assert store.get("reg.example") == Credentials("helper-user", "s3")
    assert store.get("plain.example") == Credentials("file", "pw")


def test_missing_helper_is_reported(tmp_path):
    _write_config(tmp_path, {"credsStore": "does-not-exist-dockyard"})
    with pytest.raises(errdefs.Unavailable, match="docker-credential-does-not-exist-dockyard"):
        CredentialStore(tmp_path / "config.json").get("reg.example")


# ------------------------------------------------------------------ endpoints


def test_docker_hub_endpoints_with_mirrors():
    config = RegistryConfig(mirrors=("https://mirror.example/",))
    endpoints = resolve_endpoints("docker.io", config)
    assert [e.url for e in endpoints] == ["https://mirror.example",
                                          "https://registry-1.docker.io"]
    assert endpoints[0].mirror and not endpoints[1].mirror
    assert all(e.host == "docker.io" for e in endpoints)
    assert repository_path("docker.io", "alpine") == "library/alpine"
    assert repository_path("docker.io", "user/app") == "user/app"
    assert repository_path("quay.io", "app") == "app"


@pytest.mark.parametrize("domain", ["127.0.0.1:5000", "127.8.9.10", "localhost:5000",
                                    "[::1]:5000", "localhost"])
def test_loopback_is_insecure_by_default(domain):
    assert is_insecure(domain, RegistryConfig())
    endpoints = resolve_endpoints(domain)
    assert [e.url.split("://")[0] for e in endpoints] == ["https", "http"]
    assert not endpoints[0].tls_verify


def test_configured_insecure_registries():
    config = RegistryConfig(insecure_registries=("10.1.0.0/16", "reg.lan:5000"))
    assert is_insecure("10.1.2.3:443", config)
    assert is_insecure("reg.lan:5000", config)
    assert not is_insecure("reg.lan:6000", config)
    assert not is_insecure("10.2.0.1", config)
    assert [e.url for e in resolve_endpoints("secure.example")] == ["https://secure.example"]
    assert resolve_endpoints("secure.example")[0].tls_verify


def test_retry_after_and_progress_json():
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "2"}), 9) == 2.0
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "9999"}), 9) == 30.0
    assert _retry_after(httpx.Response(429), 0.5) == 0.5
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "junk"}), 0.5) == 0.5
    assert ProgressEvent("abc", "Downloading", 5, 10).to_json() == {
        "status": "Downloading", "id": "abc", "progressDetail": {"current": 5, "total": 10}}
    assert ProgressEvent("", "Digest: sha256:x").to_json() == {"status": "Digest: sha256:x"}
