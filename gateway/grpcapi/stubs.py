"""The generated gRPC modules of protos/llmgateway/v1, built first if missing or stale.

protoc writes imports relative to the proto root (``from llmgateway.v1 import ...``), so the
output directory goes on ``sys.path``.
"""

from __future__ import annotations

import sys

from gateway.grpcapi.codegen import OUT, generate

generate()
if str(OUT) not in sys.path:
    sys.path.insert(0, str(OUT))

from llmgateway.v1 import gateway_pb2 as pb  # noqa: E402
from llmgateway.v1 import gateway_pb2_grpc as pb_grpc  # noqa: E402

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["LLMGateway"].full_name

__all__ = ["SERVICE_NAME", "pb", "pb_grpc"]
