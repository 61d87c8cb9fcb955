"""dockyard.errdefs kinds <-> gRPC status codes, in containerd's wording.

Servicers raise errdefs errors (or let the local layer raise them); the decorators here
turn them into a gRPC status whose message ends with containerd's class text
(": not found", ": already exists", ...). ctr strips that suffix and re-appends it, so a
message like 'container "x": not found' prints exactly as containerd's does.

Also: the per-request namespace (the `containerd-namespace` header), which containerd
requires on every namespaced call.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from dockyard import errdefs

log = logging.getLogger(__name__)

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"

# (errdefs kind, gRPC code, containerd's class text) -- the first match wins, so
# subclasses listed before their bases would take precedence.
_KINDS: tuple[tuple[type[errdefs.DockyardError], grpc.StatusCode, str], ...] = (
    (errdefs.NotFound, grpc.StatusCode.NOT_FOUND, "not found"),
    (errdefs.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "already exists"),
    (errdefs.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "invalid argument"),
    # containerd reports state conflicts as FailedPrecondition
    (errdefs.Conflict, grpc.StatusCode.FAILED_PRECONDITION, "failed precondition"),
    (errdefs.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "failed precondition"),
    (errdefs.Unavailable, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    (errdefs.NotImplementedFeature, grpc.StatusCode.UNIMPLEMENTED, "not implemented"),
    (errdefs.DataLoss, grpc.StatusCode.DATA_LOSS, "data loss"),
    (errdefs.Unauthorized, grpc.StatusCode.UNAUTHENTICATED, "unauthorized"),
)

_FROM_CODE: dict[grpc.StatusCode, type[errdefs.DockyardError]] = {
    code: kind for kind, code, _ in reversed(_KINDS)
}

# containerd's identifier rule (namespaces, container ids, lease ids, ...)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$")
_IDENTIFIER_MAX = 76


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC code and message for an exception raised by a service."""
    for kind, code, text in _KINDS:
        if isinstance(exc, kind):
            message = str(exc) or text
            if message != text and not message.endswith(": " + text):
                message = f"{message}: {text}"
            return code, message
    return grpc.StatusCode.UNKNOWN, str(exc) or type(exc).__name__


def from_status(code: grpc.StatusCode, message: str) -> errdefs.DockyardError:
    """The errdefs error for a gRPC status (for dockyard's own gRPC clients)."""
    kind = _FROM_CODE.get(code, errdefs.DockyardError)
    return kind(message)


def validate_identifier(kind: str, value: str) -> str:
    """containerd's identifiers.Validate, with its messages (which do not name the
    kind of object; `kind` is for the log)."""
    if not value:
        raise errdefs.InvalidArgument("identifier must not be empty")
    if len(value) > _IDENTIFIER_MAX:
        raise errdefs.InvalidArgument(
            f'identifier "{value}" greater than maximum length ({_IDENTIFIER_MAX} characters)'
        )
    if not _IDENTIFIER.match(value):
        raise errdefs.InvalidArgument(f'identifier "{value}" must match {_IDENTIFIER.pattern}')
    return value


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


def namespace_of(context: grpc.aio.ServicerContext) -> str:
    """The request's namespace; containerd assumes no default."""
    ns = metadata_value(context, NAMESPACE_HEADER)
    if not ns:
        # containerd answers FailedPrecondition here, not InvalidArgument
        raise errdefs.FailedPrecondition("namespace is required")
    return validate_identifier("namespace", ns)


def lease_of(context: grpc.aio.ServicerContext) -> str | None:
    """The lease a client attached to the request (ctr does for pull/import)."""
    return metadata_value(context, LEASE_HEADER) or None


F = TypeVar("F", bound=Callable[..., Any])


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, name: str) -> None:
    code, message = to_status(exc)
    if code == grpc.StatusCode.UNKNOWN:
        log.exception("%s failed unexpectedly", name, exc_info=exc)
    else:
        log.debug("%s: %s: %s", name, code.name, message)
    await context.abort(code, message)


def rpc(func: F) -> F:
    """Wrap an async servicer method (unary or async-generator) to map errors."""
    name = func.__qualname__
    if inspect.isasyncgenfunction(func):
        @functools.wraps(func)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[Any]:
            try:
                async for item in func(self, request, context):
                    yield item
            except errdefs.DockyardError as exc:
                await _abort(context, exc, name)
            except (ValueError, TypeError) as exc:
                await _abort(context, errdefs.InvalidArgument(str(exc)), name)
        return stream  # type: ignore[return-value]

    @functools.wraps(func)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await func(self, request, context)
        except errdefs.DockyardError as exc:
            await _abort(context, exc, name)
        except (ValueError, TypeError) as exc:
            # protobuf raises these for malformed values (bad Any, wrong field types)
            await _abort(context, errdefs.InvalidArgument(str(exc)), name)
    return unary  # type: ignore[return-value]
