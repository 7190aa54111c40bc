"""A model of vLLM's automatic prefix cache, for the stub server: full KV blocks of token ids,
chained by hash, and how many of a prompt's tokens a request would read from them.

It reproduces what the QL guard protects against (pipeline.llm.token_ql): a prompt's rows that
were served from the cache were not computed, so their prompt log-probabilities are stale.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Sequence

BLOCK = 32  # the KV block size the project's servers use (VLLMServer --block-size)


class PrefixCache:
    def __init__(self, block: int = BLOCK):
        self.block = block
        self._blocks: set[bytes] = set()
        self._lock = threading.Lock()

    def _chain(self, ids: Sequence[int]) -> list[bytes]:
        """The hash of every full block, each covering the blocks before it (as vLLM's chain)."""
        hashes, parent = [], b""
        for start in range(0, len(ids) - len(ids) % self.block, self.block):
            parent = hashlib.blake2b(parent + repr(tuple(ids[start:start + self.block])).encode(),
                                     digest_size=16).digest()
            hashes.append(parent)
        return hashes

    def read(self, ids: Sequence[int]) -> int:
        """Tokens a request reads from the cache: whole blocks, and never the last prompt token
        (vLLM computes at least one, to have logits to sample from)."""
        with self._lock:
            cached = 0
            for h in self._chain(ids):
                if h not in self._blocks:
                    break
                cached += self.block
        return min(cached, ((len(ids) - 1) // self.block) * self.block)

    def write(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._blocks.update(self._chain(ids))
