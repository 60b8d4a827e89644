# The gateway image. Triton with TensorRT-LLM runs beside it in NVIDIA's own container
# (deploy/compose.yaml for one GPU node, deploy/kubernetes/ for a cluster).
#   docker build -t triton-openai-gateway .
#   docker run -p 8080:8080 -p 50051:50051 \
#       -v "$PWD/my-config.toml:/etc/gateway/config.toml:ro" \
#       -v /path/to/hf-tokenizer:/tokenizer:ro \
#       -e GATEWAY_CONFIG=/etc/gateway/config.toml triton-openai-gateway
# It serves the [[models]] of its config file (see deploy/gateway.example.toml); it has no embedded
# CPU Triton. GATEWAY_PORT and GATEWAY_GRPC_PORT below win over the file's port settings.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build: a virtualenv with the gateway, its dependencies and its gRPC stubs -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv

# dependencies first, from pyproject.toml alone, so that a code change reuses this layer
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt

# The stubs are generated here, from protos/, with the grpcio-tools just installed, into
# gateway/_generated, which the package install then carries into site-packages. An installed
# package has no protos/ beside it, so gateway.grpcapi.codegen never writes at run time; the import
# from outside the source tree (-I: no cwd on sys.path) proves the installed stubs load.
COPY protos ./protos
COPY gateway ./gateway
RUN /opt/venv/bin/python -m gateway.grpcapi.codegen --force \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/python -I -c "import gateway.grpcapi.stubs, gateway.api.app"

# ---- runtime: the virtualenv only, as an unprivileged numeric user -------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gateway \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_GRPC_HOST=0.0.0.0 \
    GATEWAY_GRPC_PORT=50051 \
    GATEWAY_DATA_DIR=/data
# durable state: the usage ledger, uploaded files and batches (mount a volume here)
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080 50051
# SIGTERM drains: /ready turns 503 at once, in-flight requests get drain_timeout seconds (default 30)
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]
# `docker run IMAGE` serves; `docker run --rm IMAGE keys create --project P` makes an API key
ENTRYPOINT ["python", "-m", "gateway"]
CMD ["serve"]
