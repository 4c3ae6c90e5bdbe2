"""The errors a serving request can get. Each is an ``RtinferError``: the HTTP front maps them
to status codes (``InvalidRequest`` 400, ``Overloaded`` 429, ``RequestTimeout`` 408), and one
request's error never fails the other requests of its batch."""

from __future__ import annotations

from rtinfer.errors import RtinferError


class ServingError(RtinferError):
    """A batcher or deployment was misconfigured, or the model failed on a request."""


class InvalidRequest(ServingError):
    """A request's payload does not fit the model: the message names the input and what is
    wrong (count, rank, shape, dtype, NaN)."""


class Overloaded(ServingError):
    """The batcher's queue is full: back-pressure; retry later or add replicas."""


class RequestTimeout(ServingError):
    """A request was not answered within its timeout."""


class BatcherClosed(ServingError):
    """The batcher was closed before it could take or answer the request."""


__all__ = ["BatcherClosed", "InvalidRequest", "Overloaded", "RequestTimeout", "ServingError"]
