"""The local embedder's token-budget batches: the grouping's rules, and the vectors equal
sentence-transformers' `encode` on the same texts (random texts, several budgets)."""

import random

import numpy as np
import pytest

from pipeline.embedding import Embedder, token_batches
from pipeline.testing.tiny_encoder import build_tiny_sentence_encoder
from tests.conftest import CACHE


@pytest.mark.parametrize("seed", range(20))
def test_token_batches_cover_every_text_once_within_both_limits(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 200))]
    max_texts, max_tokens = rng.randint(1, 40), rng.choice([0, 1, 64, 512, 2048, 10_000])
    batches = token_batches(lengths, max_texts, max_tokens)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= max_texts
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= max_tokens
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    # greedy: a batch stops only when the next text breaks a limit
    flat = [i for b in batches for i in b]
    for batch, following in zip(batches, batches[1:]):
        nxt = following[0]
        assert len(batch) == max_texts or (len(batch) + 1) * lengths[batch[0]] > max_tokens, (batch, nxt)
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_token_batches_refuse_bad_limits():
    with pytest.raises(ValueError, match="max_texts"):
        token_batches([3], 0, 100)


@pytest.fixture(scope="module")
def tiny_embedder_path():
    return build_tiny_sentence_encoder(CACHE / "tiny-embedder-v1")


def _random_texts(rng, n):
    words = ["cat", "the", "kernel", "--flag", "§", "ünïcode", "x" * 30, "42", "(a)", "man(1)", "pipe|sort"]
    return [" ".join(rng.choice(words) for _ in range(rng.choice([1, 3, 20, 80, 400]))) for _ in range(n)]


@pytest.mark.parametrize("batch_tokens", [0, 16, 300, 2048])
def test_vectors_equal_sentence_transformers_encode(tiny_embedder_path, batch_tokens):
    rng = random.Random(batch_tokens)
    texts = _random_texts(rng, 57)
    embedder = Embedder(str(tiny_embedder_path), batch_size=8, batch_tokens=batch_tokens)
    ours = embedder.encode(texts)
    theirs = embedder.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # padding changes the last bits only
    assert embedder.encode([]).shape == (0, embedder.dim)


def test_lengths_count_what_the_model_reads(tiny_embedder_path):
    embedder = Embedder(str(tiny_embedder_path))
    limit = embedder.model.max_seq_length
    short, long = embedder.encoded_lengths(["a cat", "word " * (limit * 2)])
    assert short == len(embedder.model.tokenize(["a cat"])["input_ids"][0])
    assert long == limit
