"""gRPC core settings that must be in the environment before ``grpc`` is first imported.

grpcio reads ``GRPC_EXPERIMENTS`` once, when its C core loads. Its EventEngine client
(``event_engine_client``, on by default since grpcio 1.6x) reads each message on an EventEngine
thread and hands it on to the completion queue that grpc.aio's poller thread drains: one more
thread hop per message than the classic poller, which reads on the poller thread itself. The
gateway receives one small message per generated token, so that hop is a large share of its CPU
per token (``python -m perf.bench --launch --compare stock:GRPC_EXPERIMENTS=`` measures it, side
by side in one run). A ``GRPC_EXPERIMENTS`` already in the environment (even empty, for grpc's own
defaults) is left as it is.
"""

from __future__ import annotations

import os
import sys

CLIENT_EXPERIMENTS = "-event_engine_client"


def apply() -> bool:
    """Set the gateway's gRPC defaults; False when ``grpc`` was imported already (too late)."""
    if "grpc" in sys.modules:
        return False
    os.environ.setdefault("GRPC_EXPERIMENTS", CLIENT_EXPERIMENTS)
    return True
