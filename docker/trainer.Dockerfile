# Training, export and evaluation (TensorFlow CPU); data and models live on mounted volumes.
# docker build -f docker/trainer.Dockerfile -t curatornet-trainer .
# docker run --rm -v "$PWD/data:/data" -v "$PWD/models:/models" curatornet-trainer \
#     train --data /data/pixels --out /models/next --preset quick \
#     --image-encoder /app/models/encoders/efficientnet-lite0.json

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin trainer \
    && mkdir -p /data /models \
    && chown trainer /data /models
WORKDIR /app
COPY pyproject.toml README.md ./
COPY curatornet ./curatornet
COPY training ./training
# The image encoder that `synth --images` and `train --image-encoder` use.
COPY models/encoders ./models/encoders
RUN pip install --no-cache-dir "./[train]"
USER 10001
VOLUME ["/data", "/models"]
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]
