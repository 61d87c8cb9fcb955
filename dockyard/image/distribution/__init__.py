# Registry client (OCI distribution spec): pull and push images.
#   registry     endpoint resolution: Docker Hub, mirrors, insecure registries
#   credentials  ~/.docker/config.json auths, credsStore and credHelpers
#   auth         WWW-Authenticate challenges, Bearer token flow, Basic auth
#   client       one repository on one endpoint: manifests, blobs, uploads
#   progress     per-layer progress events in Docker's vocabulary
#   pull         reference → verified manifest, config and layers in a content store
#   push         content store → registry (exists check, cross-repo mount, uploads)

from dockyard.image.distribution.auth import Authenticator
from dockyard.image.distribution.client import RegistryClient, RegistryError
from dockyard.image.distribution.credentials import Credentials, CredentialStore
from dockyard.image.distribution.progress import ProgressEvent
from dockyard.image.distribution.pull import PullOptions, PullResult, pull
from dockyard.image.distribution.push import PushOptions, PushResult, push
from dockyard.image.distribution.registry import Endpoint, RegistryConfig, resolve_endpoints

__all__ = [
    "Authenticator",
    "CredentialStore",
    "Credentials",
    "Endpoint",
    "ProgressEvent",
    "PullOptions",
    "PullResult",
    "PushOptions",
    "PushResult",
    "RegistryClient",
    "RegistryConfig",
    "RegistryError",
    "pull",
    "push",
    "resolve_endpoints",
]
