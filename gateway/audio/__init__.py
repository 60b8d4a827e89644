"""Audio transcription (OpenAI's ``/v1/audio/transcriptions``): decoding uploads, cutting them into
Whisper's 30 s windows, the Whisper text contract of the Triton model, and the response formats.

The driver that walks the windows against the model is :mod:`gateway.core.transcribe`; nothing
here does I/O beyond the decoding thread pool, and nothing here knows HTTP or gRPC.
"""
