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


# Padded tokens per encoder batch (--embed_batch_tokens). On CPU, batches of about 2k tokens cut
# by token count ran 1.2-1.35x faster than sentence-transformers' fixed batches of 32 or 64 texts
# (bench/embed_batching.py); on a GPU a larger budget pays.
EMBED_BATCH_TOKENS = 2048


def token_batches(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Indices of texts grouped into encoder batches, longest first: a batch holds at most
    `max_texts` texts and, padded to its longest, at most `max_tokens` tokens (a longer text goes
    alone). Ties keep input order, so the grouping is a function of the lengths alone.

    Why not sentence-transformers' own batching: `encode` sorts by characters and cuts batches of
    a fixed count, so a batch of short texts is as small as one of 256-token texts, and a text
    whose characters mislead (code, symbols) pads its whole batch. The vectors are the same
    (tests/test_embedding_batches.py checks them against `encode` on random texts)."""
    if max_texts < 1 or max_tokens < 0:
        raise ValueError(f"max_texts must be >= 1 and max_tokens >= 0, not {max_texts} and {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        batch = batches[-1] if batches else None
        # sorted longest first: the batch's first text sets its padded length
        if batch and len(batch) < max_texts and (len(batch) + 1) * lengths[batch[0]] <= max_tokens:
            batch.append(i)
        else:
            batches.append([i])
    return batches


class Embedder:
    """Unit-normalised float32 embeddings from a sentence-transformers or plain HF model, encoded
    in batches of at most `batch_size` texts and `batch_tokens` padded tokens (0: sentence-
    transformers' batches of `batch_size`)."""

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER, *, batch_size: int = 64,
                 batch_tokens: int = EMBED_BATCH_TOKENS, device: Optional[str] = None,
                 max_seq_length: Optional[int] = None, trust_remote_code: bool = False):
        import_model_libraries()
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.name = name_or_path
        self.batch_size, self.batch_tokens = batch_size, batch_tokens
        self.model = SentenceTransformer(resolve_model_path(name_or_path), device=device,
                                         trust_remote_code=trust_remote_code)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.dim = int(self.model.get_embedding_dimension())
        self.tokenizer = self.model.tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        if not self.batch_tokens:
            return self._encode(texts, self.batch_size)
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for batch in token_batches(self.encoded_lengths(texts), self.batch_size, self.batch_tokens):
            vectors[batch] = self._encode([texts[i] for i in batch], len(batch))
        return vectors

    def encoded_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model reads of each text: special tokens included, cut at its max_seq_length.
        Only the batching uses them: a length that is off pads a batch, it never changes a vector."""
        ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                             max_length=self.model.max_seq_length, verbose=False)["input_ids"]
        return [len(i) for i in ids]

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.tokenizer, text)
