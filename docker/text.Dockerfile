# The legacy text service: bigram, LSTM (CPU torch is plenty) and sentence embeddings.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY diffusion_worker ./diffusion_worker
COPY ebm_worker ./ebm_worker
COPY text_service ./text_service
COPY training ./training
RUN pip install ".[text-service]" && useradd --create-home --uid 10001 app
COPY models ./models
USER app
EXPOSE 8001
CMD ["python", "-m", "text_service"]
