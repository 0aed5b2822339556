# The recommendation service: FastAPI + ONNX Runtime + FAISS, no TensorFlow.
# Build from the repository root: docker build -f docker/service.Dockerfile -t curatornet-service .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
# The service and what it shares with training; never training/ itself (tests/test_imports.py).
COPY curatornet ./curatornet
COPY service ./service
# The runtime dependencies only (no extras): the trainer image carries TensorFlow, this one not.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CURATORNET_HOST=0.0.0.0 \
    CURATORNET_PORT=8000 \
    CURATORNET_MODEL_DIR=/app/models/default \
    CURATORNET_STORE_URL=sqlite:////data/curatornet.db \
    CURATORNET_DEMO_DIR=/data/demo
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin curatornet \
    && mkdir -p /data /models \
    && chown curatornet /data /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The shipped model, the image encoder it names (../encoders) and the 2048-d features model.
COPY models/default ./models/default
COPY models/encoders ./models/encoders
COPY models/synthetic-2048 ./models/synthetic-2048
USER 10001
EXPOSE 8000
VOLUME ["/data"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['CURATORNET_PORT'] + '/healthz', timeout=2)"]
CMD ["python", "-m", "service"]
