"""The ONNX Runtime session every embedded CPU model runs in."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def cpu_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session over the graph at ``path``: ``threads`` intra-op threads (0: ONNX Runtime's
    default, one per physical core), one inter-op thread (sequential execution: Triton or the
    scheduler thread makes one call at a time), every graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(threads, 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
