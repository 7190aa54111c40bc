"""A served embedder for retrieval: any OpenAI-compatible `/v1/embeddings` endpoint (vLLM serving
an embedding model, TEI, a hosted API) through the LLM's client layer, so batching,
concurrency, retries and failover are the same as for the LLM's requests.

Vectors are L2-normalised here whatever the server did (retrieval ranks by dot product, i.e.
cosine), kept in float32, and every answer must have the dimension of the first (or of
`dim` when it is given): an endpoint that changes model mid-run fails loudly.

A request the endpoint refuses for its input (400, 413, 422: a text longer than the model
takes, say) is halved until each refused text is alone, so one bad text costs about log2(batch)
more requests and is reported by itself; the job dead-letters it. Any other failure (the server
down, a 404 for a wrong path) stops the job, as the LLM's do.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Sequence

import numpy as np

from pipeline.embedding import EMBED_BATCH_TOKENS
from pipeline.llm import usage
from pipeline.llm.types import ClientConfig, LLMError, LLMResult

# Statuses that refuse the request's input rather than the request: vLLM answers 400 for a text
# longer than the model's context; 413 and 422 are other servers' "too large" and "invalid".
REFUSED_INPUT = frozenset({400, 413, 422})


class EmbeddingError(RuntimeError):
    """The endpoint failed after retries, or answered something that is not the vectors asked for."""


class InputRefused(EmbeddingError):
    """The endpoint refused the request for what was in it (REFUSED_INPUT)."""


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
        if result.status in REFUSED_INPUT:
            raise InputRefused(result.detail)
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


async def embed_or_refuse(client, model: str, texts: Sequence[str]) -> tuple[list, dict[int, str]]:
    """([vector, or None for a refused text] in input order, {index: the server's reason}): a
    refused batch is halved, and its halves asked again, until each refused text is alone."""
    try:
        return list(await embed_batch(client, model, texts)), {}
    except InputRefused as exc:
        if len(texts) == 1:
            return [None], {0: str(exc)}
    mid = len(texts) // 2
    (left, left_refused), (right, right_refused) = await asyncio.gather(
        embed_or_refuse(client, model, texts[:mid]), embed_or_refuse(client, model, texts[mid:]))
    return left + right, {**left_refused, **{mid + i: why for i, why in right_refused.items()}}


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
        """Every text's vector; a text the endpoint refuses is an EmbeddingError."""
        vectors, refused, _ = self.encode_some(texts)
        if refused:
            index, why = min(refused.items())
            raise EmbeddingError(f"the embedder endpoint refused {len(refused)} of {len(texts)} texts, "
                                 f"the first ({texts[index][:80]!r}): {why}")
        return vectors

    def encode_some(self, texts: Sequence[str], kind: str = "embed") -> tuple[np.ndarray, dict[int, str], "usage.UsageMeter"]:
        """(the vectors of the texts the endpoint took, in input order; {index: why} for those it
        refused; the requests' token usage under `kind`)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32), {}, usage.UsageMeter()
        model, size = self.spec.client.model, self.batch_size
        starts = list(range(0, len(texts), size))

        async def all_batches(client):  # started inside measure(), so its tasks see the meter
            return await asyncio.gather(*(embed_or_refuse(client, model, list(texts[i:i + size])) for i in starts))

        try:
            parts, meter = self._llm.run(lambda client: usage.measure(kind, all_batches(client)))
        except LLMError as exc:
            raise EmbeddingError(f"the embedder endpoint failed: {exc}") from None
        refused = {start + i: why for start, (_, part) in zip(starts, parts) for i, why in part.items()}
        kept = [v for vectors, _ in parts for v in vectors if v is not None]
        if not kept:
            return np.zeros((0, self.dim), dtype=np.float32), refused, meter
        widths = {len(v) for v in kept}
        if len(widths) > 1:
            raise EmbeddingError("the embedder endpoint's vectors are ragged")
        vectors = np.asarray(kept, dtype=np.float32)
        if self.dim and vectors.shape[1] != self.dim:
            raise EmbeddingError(f"the embedder endpoint answered {vectors.shape[1]}-dimensional vectors, "
                                 f"expected {self.dim} (--embedder-dim, or its first answer)")
        return normalise(vectors), refused, meter

    def close(self) -> None:
        self._llm.release()

    def __enter__(self) -> "RemoteEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_embedder(spec, batch_size: int = 64, trust_remote_code: bool = False,
                  batch_tokens: int = EMBED_BATCH_TOKENS):
    """A local sentence-transformers Embedder for a model name or path (batch_tokens: its padded
    tokens per batch), a RemoteEmbedder for a ServedEmbedder."""
    if isinstance(spec, ServedEmbedder):
        return RemoteEmbedder(spec)
    from pipeline.embedding import Embedder

    return Embedder(spec, batch_size=batch_size, trust_remote_code=trust_remote_code, batch_tokens=batch_tokens)
