"""Exceptions raised by the dropnet client.

Every failed call raises a subclass of :class:`DropnetError` named after its gRPC status code
(``NotFound``, ``InvalidArgument``, ...) carrying that code and the server's message. Inputs the
client can reject before sending (a wrong shape, an unknown option) raise :class:`InvalidArgument`
too, which is also a :class:`ValueError`.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc

__all__ = [
    "DropnetError", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
]


class DropnetError(Exception):
    """A call failed. ``code`` is the :class:`grpc.StatusCode`, ``message`` the server's text."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, message={self.message!r})"


class Cancelled(DropnetError):
    """The call was cancelled (e.g. :meth:`dropnet.Training.cancel`)."""
    code = grpc.StatusCode.CANCELLED


class Unknown(DropnetError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(DropnetError, ValueError):
    """A bad shape, a NaN, a rate outside [0, 1), an unknown option: the message names it."""
    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(DropnetError, TimeoutError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(DropnetError, LookupError):
    """No model or data set of that name."""
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DropnetError):
    """The name is taken."""
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(DropnetError, PermissionError):
    """The token's role may not make this call (a predict token asking to train)."""
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DropnetError):
    """A server limit: batch size, samples, queue length, message size."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(DropnetError):
    """E.g. a second Train on a model that is training, or deleting it meanwhile."""
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(DropnetError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(DropnetError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(DropnetError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(DropnetError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(DropnetError, ConnectionError):
    """No server answered at the target (or it is shutting down)."""
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(DropnetError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(DropnetError):
    """The server wants a bearer token (``Client(token=...)``) and got none or an unknown one."""
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: Dict[grpc.StatusCode, Type[DropnetError]] = {
    cls.code: cls
    for cls in (Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
                PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
                Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated)
}


def from_rpc_error(error: grpc.RpcError) -> DropnetError:
    """The exception for a failed gRPC call (a ``grpc.RpcError`` that is also a ``grpc.Call``)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    return _BY_CODE.get(code, DropnetError)(message, code)
