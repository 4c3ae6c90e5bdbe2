"""``rtinfer.serving``: serve a compiled model to many concurrent requests.

``Batcher`` batches single-example requests dynamically in front of a compiled model (threads
and asyncio); ``deployment`` serves a saved artifact over HTTP with Ray Serve replicas (Ray is
imported only when it is called); ``rtinfer serve ARTIFACT_DIR`` runs that from the command line.
See docs/serving.md.
"""

from __future__ import annotations

from rtinfer.serving.batcher import Batcher, bucket_sizes
from rtinfer.serving.deploy import deployment
from rtinfer.serving.errors import (
    BatcherClosed,
    InvalidRequest,
    Overloaded,
    RequestTimeout,
    ServingError,
)

__all__ = ["Batcher", "BatcherClosed", "InvalidRequest", "Overloaded", "RequestTimeout",
           "ServingError", "bucket_sizes", "deployment"]
