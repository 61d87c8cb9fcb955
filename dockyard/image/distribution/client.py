"""One repository on one registry endpoint: the OCI distribution HTTP API.

Every request goes through _send, which adds authorization, answers a 401
challenge once, and retries 429/5xx and connection errors with exponential
backoff (honouring Retry-After). Blob bodies are streamed, never buffered.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from dockyard import errdefs
from dockyard.image import mediatypes as mt
from dockyard.image.digest import digest_bytes, parse_digest
from dockyard.image.distribution.auth import Authenticator, repository_scope
from dockyard.image.distribution.registry import Endpoint, RegistryConfig, resolve_endpoints

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_RETRY_AFTER_S = 30.0
DEFAULT_CHUNK_THRESHOLD = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024


class RegistryError(errdefs.Unavailable):
    """The registry answered with a status we cannot proceed from."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes  # the exact bytes: their digest is the manifest's identity
    media_type: str
    digest: str  # computed from data (and checked against the registry's header)


def error_text(response: httpx.Response) -> str:
    """The registry's own words from an OCI error body, or the status line."""
    try:
        errors = response.json().get("errors") or []
        parts = [f"{e.get('code', '').lower().replace('_', ' ')}: {e.get('message', '')}"
                 if e.get("code") else e.get("message", "") for e in errors]
        if parts:
            return "; ".join(p for p in parts if p)
    except Exception:  # noqa: BLE001 - any body that is not the OCI error JSON
        pass
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _retry_after(response: httpx.Response | None, fallback: float) -> float:
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return fallback
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER_S)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return fallback
    return min(max(when - time.time(), 0.0), _MAX_RETRY_AFTER_S)


class RegistryClient:
    """Talks to repository on endpoint. Thread-safe (httpx.Client is)."""

    def __init__(self, endpoint: Endpoint, repository: str, auth: Authenticator, *,
                 push: bool = False, retries: int = 3, backoff_s: float = 0.5,
                 timeout_s: float = 60.0) -> None:
        self.endpoint = endpoint
        self.repository = repository
        self.auth = auth
        self.retries = max(retries, 1)
        self.backoff_s = backoff_s
        self.scopes: tuple[str, ...] = (
            repository_scope(repository, "pull,push" if push else "pull"),)
        self._http = httpx.Client(verify=endpoint.tls_verify, follow_redirects=True,
                                  timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.requests: list[tuple[str, str]] = []  # (method, path) log, for tests and debugging

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def url(self, path: str) -> str:
        return f"{self.endpoint.url}/v2/{self.repository}/{path}"

    def _send(self, method: str, url: str | httpx.URL, *, scopes: tuple[str, ...] | None = None,
              headers: dict[str, str] | None = None, content: bytes | None = None,
              stream: bool = False, retries: int | None = None,
              authenticate: bool = True) -> httpx.Response:
        scopes = scopes or self.scopes
        tries = retries or self.retries
        auth_retried = not authenticate
        attempt = 0
        while True:
            request_headers = dict(headers or {})
            sent = (self.auth.authorization(self.endpoint.url, self.endpoint.host, scopes)
                    if authenticate else None)
            if sent:
                request_headers["Authorization"] = sent
            request = self._http.build_request(method, url, headers=request_headers,
                                               content=content)
            self.requests.append((method, request.url.path))
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                attempt += 1
                if attempt >= tries:
                    raise errdefs.Unavailable(
                        f"cannot reach registry {self.endpoint.url}: {exc}") from exc
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
                continue
            if response.status_code == 401 and not auth_retried:
                auth_retried = True
                response.read()
                if self.auth.on_unauthorized(self.endpoint.url, self.endpoint.host,
                                             response, scopes, sent):
                    response.close()
                    continue
                return response
            if response.status_code in _RETRY_STATUSES:
                attempt += 1
                if attempt < tries:
                    delay = _retry_after(response, self.backoff_s * 2 ** (attempt - 1))
                    response.close()
                    time.sleep(delay)
                    continue
            return response

    def ping(self) -> None:
        """GET /v2/: proves the endpoint speaks the API and learns its auth scheme."""
        response = self._send("GET", f"{self.endpoint.url}/v2/", retries=1, authenticate=False)
        response.close()
        if response.status_code == 401:
            # Anonymous may still be fine for this repository; just learn the challenge.
            self.auth.remember(self.endpoint.url, response)
            return
        if response.status_code != 200:
            raise RegistryError(f"{self.endpoint.url} does not speak the registry API v2: "
                                f"{error_text(response)}", response.status_code)

    # ------------------------------------------------------------ manifests

    def get_manifest(self, reference: str) -> FetchedManifest:
        """reference is a tag or a digest. 404 → NotFound; 401 → Unauthorized."""
        response = self._send("GET", self.url(f"manifests/{reference}"),
                              headers={"Accept": ", ".join(mt.MANIFEST_ACCEPT)})
        self._check(response, f"manifest {reference}")
        data = response.content
        computed = digest_bytes(data)
        header = response.headers.get("docker-content-digest", "")
        for claimed, what in ((header, "the registry's Docker-Content-Digest"),
                              (reference if ":" in reference else "", "the reference")):
            if claimed and claimed.startswith("sha256:") and claimed != computed:
                raise errdefs.DataLoss(
                    f"manifest {self.repository}@{reference} from {self.endpoint.url}: digest "
                    f"mismatch: expected {claimed} ({what}), got {computed}")
            if claimed and not claimed.startswith("sha256:"):
                parse_digest(claimed)
                if digest_bytes(data, claimed.split(":", 1)[0]) != claimed:
                    raise errdefs.DataLoss(
                        f"manifest {self.repository}@{reference}: digest mismatch: "
                        f"expected {claimed}")
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return FetchedManifest(data, media_type, computed)

    def head_manifest(self, reference: str) -> str | None:
        """The manifest's digest if it exists, else None."""
        response = self._send("HEAD", self.url(f"manifests/{reference}"),
                              headers={"Accept": ", ".join(mt.MANIFEST_ACCEPT)})
        if response.status_code == 404:
            return None
        self._check(response, f"manifest {reference}")
        return response.headers.get("docker-content-digest")

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> str:
        response = self._send("PUT", self.url(f"manifests/{reference}"), content=data,
                              headers={"Content-Type": media_type})
        self._check(response, f"manifest {reference}", expected=(201, 200, 202))
        return response.headers.get("docker-content-digest") or digest_bytes(data)

    # ------------------------------------------------------------ blobs

    @contextmanager
    def blob_stream(self, digest: str, offset: int = 0) -> Iterator[tuple[int, Iterator[bytes]]]:
        """Yield (start, chunks): start is the offset the body begins at, which
        is 0 when the registry ignored our Range header."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._send("GET", self.url(f"blobs/{digest}"), headers=headers, stream=True)
        try:
            if response.status_code == 416 and offset:
                # Already have everything the registry has; an empty body.
                yield offset, iter(())
                return
            self._check(response, f"blob {digest}", expected=(200, 206))
            start = offset if response.status_code == 206 else 0
            # Raw: a blob's digest covers the bytes as stored, never a decoded
            # Content-Encoding; unchunked, so bytes received before a cut are
            # written and a retry can resume from them.
            yield start, response.iter_raw()
        finally:
            response.close()

    def blob_exists(self, digest: str) -> bool:
        response = self._send("HEAD", self.url(f"blobs/{digest}"))
        if response.status_code == 404:
            return False
        self._check(response, f"blob {digest}")
        return True

    def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Ask the registry to link digest from another repository. True when
        mounted; False when it refused (then upload as usual)."""
        scopes = (*self.scopes, repository_scope(from_repository, "pull"))
        url = httpx.URL(self.url("blobs/uploads/"),
                        params={"mount": digest, "from": from_repository})
        response = self._send("POST", url, scopes=scopes)
        if response.status_code == 201:
            return True
        if response.status_code == 202 and response.headers.get("location"):
            # The registry opened an ordinary upload instead; cancel it.
            self._send("DELETE", self._location(response), retries=1).close()
            return False
        if response.status_code in (401, 403, 404):
            return False
        self._check(response, f"mount of blob {digest} from {from_repository}",
                    expected=(201,))
        return False

    def upload_blob(self, digest: str, size: int, read_chunk, *,
                    chunk_threshold: int = DEFAULT_CHUNK_THRESHOLD,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, on_progress=None) -> None:
        """Upload a blob. read_chunk(n) returns the next n bytes of the blob.
        Monolithic (POST then PUT ?digest=) up to chunk_threshold, chunked
        (PATCH with Content-Range, then PUT ?digest=) above it."""
        response = self._send("POST", self.url("blobs/uploads/"))
        self._check(response, f"upload of blob {digest}", expected=(202,))
        location = self._location(response)
        if size <= chunk_threshold:
            data = read_chunk(size)
            response = self._send("PUT", location.copy_merge_params({"digest": digest}),
                                  content=data, headers={
                                      "Content-Type": "application/octet-stream"})
            self._check(response, f"upload of blob {digest}", expected=(201, 204))
            if on_progress:
                on_progress(size, size)
            return
        offset = 0
        while offset < size:
            data = read_chunk(min(chunk_size, size - offset))
            if not data:
                raise errdefs.DataLoss(f"blob {digest} ended at {offset} of {size} bytes "
                                       "while uploading")
            end = offset + len(data) - 1
            response = self._send("PATCH", location, content=data, retries=1, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{end}",
            })
            self._check(response, f"chunk {offset}-{end} of blob {digest}", expected=(202,))
            location = self._location(response)
            offset = end + 1
            if on_progress:
                on_progress(offset, size)
        response = self._send("PUT", location.copy_merge_params({"digest": digest}))
        self._check(response, f"upload of blob {digest}", expected=(201, 204))

    def _location(self, response: httpx.Response) -> httpx.URL:
        location = response.headers.get("location")
        if not location:
            raise RegistryError(f"registry {self.endpoint.url} started an upload but sent no "
                                "Location", response.status_code)
        return httpx.URL(self.endpoint.url).join(location)

    # ------------------------------------------------------------ errors

    def _check(self, response: httpx.Response, what: str,
               expected: tuple[int, ...] = (200,)) -> None:
        if response.status_code in expected:
            return
        if not response.is_closed:
            response.read()
        name = f"{self.endpoint.host}/{self.repository}"
        status = response.status_code
        detail = error_text(response)
        if status in (401, 403):
            raise errdefs.Unauthorized(f"access to {name} denied for {what}: {detail}")
        if status == 404:
            raise errdefs.NotFound(f"{what} not found in {name}: {detail}")
        raise RegistryError(f"registry {self.endpoint.url} failed {what} of {name}: {detail}",
                            status)


def connect(domain: str, repository: str, auth: Authenticator, *,
            config: RegistryConfig | None = None, push: bool = False,
            **options) -> RegistryClient:
    """A client for the first endpoint of domain that answers /v2/ (mirrors
    first for Docker Hub; HTTPS before plain HTTP for insecure registries)."""
    failures: list[str] = []
    for endpoint in resolve_endpoints(domain, config):
        if push and endpoint.mirror:
            continue  # mirrors are read-only
        client = RegistryClient(endpoint, repository, auth, push=push, **options)
        try:
            client.ping()
        except (errdefs.Unavailable, errdefs.Unauthorized) as exc:
            client.close()
            failures.append(f"{endpoint.url}: {exc}")
            continue
        return client
    raise errdefs.Unavailable(f"cannot reach registry {domain}: " + "; ".join(failures))
