# The gateway image (GPU deployments: Triton with TensorRT-LLM runs in NVIDIA's own container).
#   docker build -t triton-openai-gateway .
#   docker run -p 8080:8080 -v /models/tokenizer:/tokenizer:ro \
#       -e TRITON_URL=triton:8001 -e TRITON_MODEL=tensorrt_llm -e GATEWAY_MODEL_ID=my-model \
#       -e GATEWAY_TOKENIZER_DIR=/tokenizer triton-openai-gateway
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    PYTHONUNBUFFERED=1
USER gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=2).status != 200)"
ENTRYPOINT ["python", "-m", "gateway", "serve"]
