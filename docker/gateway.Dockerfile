# The gateway: slim Python, no torch.
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
RUN pip install ".[gateway]" && useradd --create-home --uid 10001 app
USER app
EXPOSE 8000
CMD ["python", "-m", "gateway"]
