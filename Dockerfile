# One image for every Python service; docker-compose picks the command and the extras.
# CUDA wheels of torch 2.14.1 carry their own CUDA runtime, so a slim Python base is enough on a GPU host
# (the NVIDIA container toolkit provides the driver).
FROM python:3.11-slim

ARG EXTRAS=all
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY diffusion_worker ./diffusion_worker
COPY ebm_worker ./ebm_worker
COPY text_service ./text_service
COPY training ./training
RUN pip install ".[${EXTRAS}]"
COPY models ./models

CMD ["python", "-m", "diffusion_worker.sample", "--help"]
