# Diffusion and EBM workers. The torch 2.14.1 wheels from PyPI carry the CUDA 13 runtime, cuDNN and
# NCCL as pip packages, so this is a CUDA PyTorch image; the host's NVIDIA container toolkit supplies
# the driver. The same image runs on a CPU-only host (device "auto" falls back to the CPU).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY diffusion_worker ./diffusion_worker
COPY ebm_worker ./ebm_worker
COPY text_service ./text_service
COPY training ./training
ARG EXTRAS=diffusion-worker,ebm-worker,training
RUN pip install ".[${EXTRAS}]" && useradd --create-home --uid 10001 app
COPY models ./models
USER app
CMD ["python", "-m", "diffusion_worker"]
