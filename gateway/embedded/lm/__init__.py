"""The embedded CPU engine: a llama GGUF as an ONNX Runtime graph with a per-sequence KV cache."""
