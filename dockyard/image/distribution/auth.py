"""Registry authentication: challenges, Bearer tokens, Basic.

A registry answers 401 with `WWW-Authenticate: Bearer realm=..,service=..` (a
token server issues short-lived JWTs per scope, "repository:<name>:pull,push")
or `Basic realm=..`. The Authenticator remembers each host's challenge so that
later requests carry a token up front, and caches tokens per scope set until
they expire. Anonymous token requests carry no Authorization; with a username
and password the token request carries Basic auth (GET), with an identity
token it is the OAuth2 refresh-token grant (POST).
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field

import httpx

from dockyard import errdefs
from dockyard.image.distribution.credentials import Credentials, CredentialStore

_CLIENT_ID = "dockyard"
_DEFAULT_TOKEN_LIFETIME_S = 60
# Renew a little early so a token does not expire between check and use.
_EXPIRY_MARGIN_S = 5


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse an RFC 7235 WWW-Authenticate value, which may hold several
    challenges: `Bearer realm="x",service="y", Basic realm="z"`."""
    challenges: list[Challenge] = []
    pos, n = 0, len(header)
    current: Challenge | None = None

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < n and header[pos] in chars:
            pos += 1

    while pos < n:
        skip(" \t,")
        start = pos
        while pos < n and header[pos] not in " \t,=":
            pos += 1
        token = header[start:pos]
        if not token:
            break
        skip(" \t")
        if pos < n and header[pos] == "=" and current is not None:
            pos += 1
            skip(" \t")
            value, pos = _parse_value(header, pos)
            current.params[token.lower()] = value
        else:
            current = Challenge(token.lower(), {})
            challenges.append(current)
    return challenges


def _parse_value(text: str, pos: int) -> tuple[str, int]:
    if pos < len(text) and text[pos] == '"':
        pos += 1
        out = []
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            out.append(text[pos])
            pos += 1
        return "".join(out), pos + 1
    start = pos
    while pos < len(text) and text[pos] not in ", \t":
        pos += 1
    return text[start:pos], pos


def repository_scope(name: str, actions: str = "pull") -> str:
    return f"repository:{name}:{actions}"


def basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class Authenticator:
    """Shared by every request of one pull or push (thread-safe)."""

    def __init__(self, credentials: CredentialStore | None = None,
                 http: httpx.Client | None = None) -> None:
        self._credentials = credentials
        self._owns_http = http is None
        self._http = http or httpx.Client(timeout=30)
        self._lock = threading.Lock()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple, tuple[str, float]] = {}
        self._creds_cache: dict[str, Credentials | None] = {}
        self.token_requests = 0  # observable by tests and logs

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def credentials_for(self, host: str) -> Credentials | None:
        with self._lock:
            if host not in self._creds_cache:
                self._creds_cache[host] = (
                    self._credentials.get(host) if self._credentials else None)
            return self._creds_cache[host]

    def authorization(self, endpoint: str, host: str, scopes: tuple[str, ...]) -> str | None:
        """The Authorization header for a request to endpoint (its base URL;
        host names its credentials), fetching a token when the endpoint is
        known to want one; None when anonymous is all we know."""
        with self._lock:
            challenge = self._challenges.get(endpoint)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials_for(host)
            return basic_header(creds) if creds and creds.username else None
        if challenge.scheme == "bearer":
            return "Bearer " + self._token(endpoint, host, challenge, scopes)
        return None

    def on_unauthorized(self, endpoint: str, host: str, response: httpx.Response,
                        scopes: tuple[str, ...], sent: str | None) -> bool:
        """Learn from a 401. True when a retry with new authorization could
        succeed; False when what we sent was already our best."""
        supported = [c for c in parse_challenges(response.headers.get("www-authenticate", ""))
                     if c.scheme in ("bearer", "basic")]
        if not supported:
            return False
        # Prefer Bearer, as the docker CLI does, when a registry offers both.
        challenge = sorted(supported, key=lambda c: c.scheme != "bearer")[0]
        with self._lock:
            known = self._challenges.get(endpoint)
            self._challenges[endpoint] = challenge
            if (sent and sent.startswith("Bearer ") and known is not None
                    and known.realm == challenge.realm
                    and challenge.params.get("error") == "insufficient_scope"):
                # The token server already granted all it will for these scopes.
                return False
            if challenge.scheme == "bearer":
                self._tokens.pop(self._token_key(endpoint, challenge, scopes), None)
        fresh = self.authorization(endpoint, host, scopes)
        return fresh is not None and fresh != sent

    def remember(self, endpoint: str, response: httpx.Response) -> None:
        """Record the challenge of a /v2/ ping without fetching anything."""
        for challenge in parse_challenges(response.headers.get("www-authenticate", "")):
            if challenge.scheme in ("bearer", "basic"):
                with self._lock:
                    self._challenges.setdefault(endpoint, challenge)
                return

    @staticmethod
    def _token_key(endpoint: str, challenge: Challenge, scopes: tuple[str, ...]) -> tuple:
        return (endpoint, challenge.realm, challenge.params.get("service", ""),
                tuple(sorted(set(scopes))))

    def _token(self, endpoint: str, host: str, challenge: Challenge,
               scopes: tuple[str, ...]) -> str:
        key = self._token_key(endpoint, challenge, scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        token, lifetime = self._fetch_token(host, challenge, scopes)
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(lifetime - _EXPIRY_MARGIN_S, 1))
        return token

    def _fetch_token(self, host: str, challenge: Challenge,
                     scopes: tuple[str, ...]) -> tuple[str, int]:
        realm = challenge.realm
        if not realm:
            raise errdefs.Unauthorized(f"registry {host} asked for a bearer token but named "
                                       "no token server (realm)")
        creds = self.credentials_for(host)
        service = challenge.params.get("service", "")
        scope_list = sorted(set(scopes)) or (
            [challenge.params["scope"]] if challenge.params.get("scope") else [])
        self.token_requests += 1
        try:
            if creds and creds.identity_token:
                response = self._http.post(realm, data={
                    "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "service": service, "scope": " ".join(scope_list), "client_id": _CLIENT_ID,
                })
            else:
                params: list[tuple[str, str]] = [("service", service)] if service else []
                params += [("scope", s) for s in scope_list]
                headers = {}
                if creds and creds.username:
                    params.append(("account", creds.username))
                    headers["Authorization"] = basic_header(creds)
                response = self._http.get(realm, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise errdefs.Unavailable(f"cannot reach token server {realm} for {host}: {exc}") \
                from exc
        if response.status_code in (401, 403):
            who = f"user {creds.username!r}" if creds and creds.username else "anonymous access"
            raise errdefs.Unauthorized(f"token server {realm} refused {who} for {host}: "
                                       f"incorrect username or password")
        if response.status_code != 200:
            raise errdefs.Unavailable(f"token server {realm} for {host} answered "
                                      f"{response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError as exc:
            raise errdefs.Unavailable(f"token server {realm} sent a non-JSON answer") from exc
        token = body.get("token") or body.get("access_token")
        if not token:
            raise errdefs.Unavailable(f"token server {realm} sent no token")
        lifetime = int(body.get("expires_in") or _DEFAULT_TOKEN_LIFETIME_S)
        return token, lifetime
