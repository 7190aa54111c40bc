"""A served embedder for retrieval: any OpenAI-compatible `/v1/embeddings` endpoint (vLLM serving
an embedding model, TEI, a hosted API) through the LLM's client layer, so batching,
concurrency, retries and failover are the same as for the LLM's requests.

Vectors are L2-normalised here whatever the server did (retrieval ranks by dot product, i.e.
cosine), kept in float32, and every answer must have the dimension of the first (or of
`dim` when it is given): an endpoint that changes model mid-run fails loudly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Sequence

import numpy as np

from pipeline.llm.types import ClientConfig, LLMError, LLMResult


class EmbeddingError(RuntimeError):
    """The endpoint failed after retries, or answered something that is not the vectors asked for."""


@dataclasses.dataclass(frozen=True)
class ServedEmbedder:
    """Where the retrieval embedder is served, and how to call it (picklable: Beam ships it)."""

    client: ClientConfig
    batch_size: int = 64  # texts per request
    dim: int = 0  # expected dimension; 0: whatever the first answer has

    def __str__(self) -> str:
        # journal keys and provenance name the model, not the host: a resume against another
        # replica of the same model reuses the vectors
        return f"served:{self.client.model}"


async def embed_batch(client, model: str, texts: Sequence[str]) -> np.ndarray:
    """One request: the texts' vectors in input order, as the server gave them (not normalised)."""
    result = LLMResult()
    payload = await client._call("embeddings", {"model": model, "input": list(texts), "encoding_format": "float"},
                                 result)
    if payload is None:
        raise EmbeddingError(f"the embedder endpoint failed ({result.reason}): {result.detail}")
    data = payload.get("data")
    if not isinstance(data, list) or len(data) != len(texts):
        raise EmbeddingError(f"the embedder endpoint answered {len(data) if isinstance(data, list) else 'no'} "
                             f"vectors for {len(texts)} texts")
    try:
        ordered = sorted(data, key=lambda d: d["index"])
        vectors = np.asarray([d["embedding"] for d in ordered], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise EmbeddingError(f"the embedder endpoint's answer is not a list of float vectors: {exc}") from None
    if vectors.ndim != 2 or [d["index"] for d in ordered] != list(range(len(texts))):
        raise EmbeddingError("the embedder endpoint's vectors are ragged or their indexes do not match the inputs")
    return vectors


def normalise(vectors: np.ndarray) -> np.ndarray:
    if not np.isfinite(vectors).all():
        raise EmbeddingError("the embedder endpoint answered a vector that is not finite")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise EmbeddingError("the embedder endpoint answered a zero vector, which has no direction to rank by")
    return np.ascontiguousarray(vectors / norms, dtype=np.float32)


class RemoteEmbedder:
    """Embedder's interface (encode, dim) over a ServedEmbedder, on the process's shared client."""

    def __init__(self, spec: ServedEmbedder):
        from pipeline.llm import blocking

        self.spec, self.name, self.batch_size = spec, str(spec), spec.batch_size
        self._llm = blocking.acquire(spec.client)
        self.dim = spec.dim
        if not self.dim:  # one short request tells the dimension before the first real batch
            try:
                self.dim = int(self.encode(["dimension probe"]).shape[1])
            except BaseException:
                self._llm.release()  # no caller will hold this embedder to close it
                raise

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model, size = self.spec.client.model, self.batch_size
        batches = [list(texts[i:i + size]) for i in range(0, len(texts), size)]

        async def all_batches(client):
            return await asyncio.gather(*(embed_batch(client, model, b) for b in batches))

        try:
            parts = self._llm.run(all_batches)
        except LLMError as exc:
            raise EmbeddingError(f"the embedder endpoint failed: {exc}") from None
        vectors = np.concatenate(parts, axis=0)
        if self.dim and vectors.shape[1] != self.dim:
            raise EmbeddingError(f"the embedder endpoint answered {vectors.shape[1]}-dimensional vectors, "
                                 f"expected {self.dim} (--embedder-dim, or its first answer)")
        return normalise(vectors)

    def close(self) -> None:
        self._llm.release()

    def __enter__(self) -> "RemoteEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_embedder(spec, batch_size: int = 64, trust_remote_code: bool = False):
    """A local sentence-transformers Embedder for a model name or path, a RemoteEmbedder for a ServedEmbedder."""
    if isinstance(spec, ServedEmbedder):
        return RemoteEmbedder(spec)
    from pipeline.embedding import Embedder

    return Embedder(spec, batch_size=batch_size, trust_remote_code=trust_remote_code)
