"""The LLMGateway service's method handlers, built from its descriptor with forgiving deserializers.

The generated ``add_LLMGatewayServicer_to_server`` deserializes with ``FromString``: bytes that are
not the message raise inside grpc, which answers UNKNOWN and names the Python exception. Here bytes
that do not parse become a :class:`~gateway.grpcapi.errors.Malformed` request, which the one
translation point (:mod:`gateway.grpcapi.errors`) answers INVALID_ARGUMENT with a clean message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from gateway.grpcapi.errors import Malformed
from gateway.grpcapi.stubs import SERVICE_NAME, pb


def _deserializer(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    malformed = Malformed(message_class.DESCRIPTOR.full_name)

    def parse(raw: bytes) -> Message | Malformed:
        try:
            return message_class.FromString(raw)
        except DecodeError:
            return malformed

    return parse


def method_handlers(servicer: Any) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """One handler per RPC of the service, as the generated code makes them but for the deserializer."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in pb.DESCRIPTOR.services_by_name["LLMGateway"].methods:
        if method.client_streaming:
            raise NotImplementedError(f"{method.full_name}: client streaming RPCs are not served")
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_deserializer(request_class),
            response_serializer=response_class.SerializeToString,
        )
    return handlers


def add_service(servicer: Any, server: grpc.aio.Server) -> None:
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
