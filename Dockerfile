# One image for the Python services of docker-compose.yml: migrate, api, worker and ingest.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# PyTorch first: the largest layer, rebuilt only when its version changes. The PyPI wheels carry the
# CUDA runtime, so the same image trains on an NVIDIA GPU (with the NVIDIA Container Toolkit) or on CPU.
RUN pip install torch==2.14.1 torchvision==0.29.1

# Then the dependencies (cached while pyproject.toml is unchanged), then the code.
COPY pyproject.toml README.md* ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY models ./models
COPY spec ./spec
COPY migrations ./migrations
RUN pip install --no-deps .

# Volumes mounted here start out owned by the service user.
RUN useradd --create-home --uid 1000 taas \
    && mkdir -p /var/lib/taas/artifacts /var/lib/taas/data /var/lib/taas/datasets \
    && chown -R taas:taas /var/lib/taas
USER taas

ENV TAAS_STATE_DIR=/var/lib/taas \
    TAAS_ARTIFACTS_DIR=/var/lib/taas/artifacts \
    TAAS_DATA_ROOT=/var/lib/taas/data \
    TAAS_DATASETS_DIR=/var/lib/taas/datasets

EXPOSE 8000
CMD ["python", "-m", "app.server", "--host", "0.0.0.0", "--port", "8000"]
