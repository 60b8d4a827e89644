"""Benchmarks. The load generator's gRPC clients get the gateway's own gRPC tuning, so the direct
target is read as cheaply as the gateway reads Triton (set here: before anything imports grpc)."""

from gateway import grpc_env

grpc_env.apply()
