"""The encoder: any HF or sentence-transformers model, mean pooling, optional projection.

It is a SentenceTransformer underneath, so a saved folder loads with
`sentence_transformers.SentenceTransformer(path)` as-is; the trainer drives it directly.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.embedding import resolve_model_path


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder(nn.Module):
    def __init__(self, name_or_path: str = "all-MiniLM-L6-v2", *, projection_dim: Optional[int] = None,
                 max_seq_length: Optional[int] = None, device: str = "auto", trust_remote_code: bool = False):
        """`max_seq_length`: tokens read per text; None keeps the model's own (256 for
        all-MiniLM-L6-v2, 512 for most BGE and E5 models), as its users and evaluators read it."""
        super().__init__()
        from sentence_transformers import SentenceTransformer, models

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        st = SentenceTransformer(resolve_model_path(name_or_path), device="cpu", trust_remote_code=trust_remote_code)
        if projection_dim:
            dim = st.get_embedding_dimension()
            dense = models.Dense(dim, projection_dim, bias=False, activation_function=nn.Identity())
            modules = [m for m in st if type(m).__name__ != "Normalize"] + [dense]
            st = SentenceTransformer(modules=modules, device="cpu")
        if max_seq_length is not None:
            st.max_seq_length = max_seq_length
        self.st = st
        self.device_name = pick_device(device)
        self.to(self.device_name)

    @classmethod
    def around(cls, st) -> "Encoder":
        """An Encoder over a SentenceTransformer being trained (no copy: the same weights)."""
        encoder = cls.__new__(cls)
        nn.Module.__init__(encoder)
        encoder.st = st
        encoder.device_name = str(st.device)
        return encoder

    @property
    def max_seq_length(self) -> int:
        return int(self.st.max_seq_length)

    @property
    def dim(self) -> int:
        return int(self.st.get_embedding_dimension())

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        features = self.st.preprocess(list(texts))
        return {k: v.to(self.device_name) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """sentence_embedding (B, d) and token_embeddings (B, L, d) with attention_mask (B, L)."""
        return self.st(dict(features))

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return self.forward(self.tokenize(texts))["sentence_embedding"]  # (B, d)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, dim: Optional[int] = None) -> np.ndarray:
        """Unit-normalised embeddings, optionally truncated to the first `dim` (Matryoshka).
        Batches hold texts of similar length (longest first, as sentence-transformers' encode
        does), so little of each batch is padding; the result is in the input order."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = []
        try:
            for start in range(0, len(texts), batch_size):
                vectors = self.embed([texts[i] for i in order[start:start + batch_size]])  # (b, d)
                if dim:
                    vectors = vectors[:, :dim]
                out.append(torch.nn.functional.normalize(vectors, dim=-1).float().cpu().numpy())
        finally:
            self.train(was_training)
        if not out:
            return np.zeros((0, dim or self.dim), dtype=np.float32)
        result = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
        result[order] = np.concatenate(out)
        return result

    def save(self, path: str) -> None:
        # SentenceTransformer.save switches the model to eval mode; training must go on with dropout.
        was_training = self.training
        try:
            self.st.save(str(path))
        finally:
            self.train(was_training)
