"""Error kinds shared by every dockyard package.

Packages raise these (or subclasses); adapters at the edges (HTTP routes,
gRPC servicers, CLI commands) map them to a status code, and nowhere else.
Messages say what failed and with which object, so a user sees the cause
and the fix.
"""

from __future__ import annotations


class DockyardError(Exception):
    """Base of every error a dockyard component raises on purpose."""


class NotFound(DockyardError):
    """The named object does not exist."""


class AlreadyExists(DockyardError):
    """An object with that name or id already exists."""


class Conflict(DockyardError):
    """The request conflicts with the object's current state."""


class InvalidArgument(DockyardError):
    """The caller gave a value that can never be valid."""


class FailedPrecondition(DockyardError):
    """The system is not in a state where the request can run."""


class Unavailable(DockyardError):
    """A dependency (kernel feature, daemon, registry) cannot be reached."""


class NotImplementedFeature(DockyardError):
    """The request names a feature dockyard does not implement."""


class DataLoss(DockyardError):
    """Content failed verification (digest or size mismatch, truncation)."""


class Unauthorized(DockyardError):
    """Credentials are missing or were refused."""
