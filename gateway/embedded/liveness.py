"""Whether a running Triton still answers: a 1-token generation, and when failed probes mean it hung.

A tritonserver can deadlock in its gRPC stream handler (2.51, the nvidia-pytriton wheel's, does): it
still accepts calls and ServerReady still says ready, but no stream is ever answered. Only a real
generation tells. :func:`generation_probe` runs one on the embedded ``synthetic`` model (always
loaded; no model compute) over a synchronous channel, for the supervisor's thread. Like every
stream the gateway sends, the call is half-closed once the request is written and read to its end:
never cancelled mid-stream, which is what sets off Triton's race. Only a call that runs past its
deadline ends early, and that Triton was not answering anyway.

:class:`Liveness` keeps the schedule and the count of failures in a row; it is given the time, so
it is tested without threads or clocks.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import SYNTHETIC_TRITON_MODEL
from gateway.engine.contract import PROBE_SAMPLING, ModelContract, build_request, is_final

Probe = Callable[[], str | None]  # None: it answered; else why not, in a few words

PROBE_TIMEOUT = 10.0  # seconds a probe may take at most
_PROBE_INPUTS = frozenset({"input_ids", "input_lengths", "request_output_len", "streaming"})


def generation_probe(url: str, model: str = SYNTHETIC_TRITON_MODEL, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the Triton at ``url`` did not stream a 1-token generation to its end (None when it did)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    # the synthetic model's required inputs and ``streaming``, packed by the gateway's one request builder
    contract = ModelContract(model, _PROBE_INPUTS, frozenset({"output_ids"}), batched=True, decoupled=True)
    request = build_request(contract, "gateway-liveness", [1], PROBE_SAMPLING, None, None)

    final = False
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            # the request iterator ends after one request: grpc half-closes the call then
            for response in stub.ModelStreamInfer(iter([request]), timeout=timeout):
                if response.error_message:
                    return f"the model answered an error: {response.error_message}"
                final = final or is_final(response.infer_response)
        except grpc.RpcError as exc:
            if not isinstance(exc, grpc.Call):
                return str(exc)
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return f"no answer within {timeout:g}s"
            return f"{exc.code().name}: {exc.details()}"
    return None if final else "the stream ended without a final response"


class Liveness:
    """When to probe a running Triton, and when failed probes mean it has stopped answering.

    One probe every ``interval`` seconds, counted from the end of the last one (or from a start);
    ``failures`` failed probes in a row and it has stopped answering. An answer clears the count.
    """

    def __init__(self, probe: Probe, interval: float = 10.0, failures: int = 3) -> None:
        if interval < 0 or failures < 1:
            raise ValueError("a liveness interval of 0 or more and at least 1 failure are needed")
        self.probe = probe
        self.interval = interval
        self.failures = failures
        self.failed = 0  # failed probes in a row
        self._due = 0.0

    def reset(self, now: float) -> None:
        """A (re)started server: nothing failed yet, the first probe one interval from ``now``."""
        self.failed = 0
        self._due = now + self.interval

    def due(self, now: float) -> bool:
        return now >= self._due

    def record(self, problem: str | None, now: float) -> str | None:
        """Count one probe's outcome (``problem`` None: it answered); the verdict once too many failed in a row."""
        self._due = now + self.interval
        if problem is None:
            self.failed = 0
            return None
        self.failed += 1
        if self.failed < self.failures:
            return None
        probes = "probe" if self.failed == 1 else "probes"
        return f"{self.failed} failed liveness {probes} in a row, the last: {problem}"
