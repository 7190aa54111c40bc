"""The initial embedder that retrieves candidates (default all-MiniLM-L6-v2, bundled offline)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

# resolve_model_path, DEFAULT_EMBEDDER and passage_text are imported from here by many callers
from pipeline.model_paths import DEFAULT_EMBEDDER, resolve_model_path  # noqa: F401
from pipeline.text_format import passage_text  # noqa: F401

_IMPORT_LOCK = threading.Lock()


def import_model_libraries() -> None:
    """Import transformers and sentence-transformers whole, under one lock per process. Their
    first import is not thread-safe (transformers resolves names such as AutoTokenizer lazily):
    with Beam's --direct_running_mode multi_threading, two DoFn setups importing at once failed
    with "cannot import name 'AutoTokenizer' from 'transformers'" (../shared/probes/
    beam_multithreading_import.py). Call it before any use of either library off the main thread."""
    with _IMPORT_LOCK:
        import sentence_transformers  # noqa: F401
        from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401 - resolves the lazy names


def count_tokens(tokenizer, text: str) -> int:
    """Tokens of `text` without special tokens or truncation: the unit of the passage budget."""
    return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def max_seq_length(model_path: str, tokenizer) -> Optional[int]:
    """How many tokens the embedder reads: sentence-transformers' max_seq_length, else the
    tokenizer's model_max_length when it is a real limit."""
    config = Path(model_path) / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 1_000_000 else None


class Embedder:
    """Unit-normalised float32 embeddings from a sentence-transformers or plain HF model."""

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER, *, batch_size: int = 64, device: Optional[str] = None,
                 max_seq_length: Optional[int] = None, trust_remote_code: bool = False):
        import_model_libraries()
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = name_or_path
        self.batch_size = batch_size
        self.model = SentenceTransformer(resolve_model_path(name_or_path), device=device,
                                         trust_remote_code=trust_remote_code)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.dim = int(self.model.get_embedding_dimension())
        self.tokenizer = self.model.tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)
