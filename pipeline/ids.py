"""Deterministic, content-addressed ids: re-running a job gives the same ids."""

from __future__ import annotations

import hashlib


def content_id(prefix: str, *parts: object, length: int = 20) -> str:
    """`prefix` + hex sha256 of the parts, joined by a separator that text cannot hold."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}{digest[:length]}"


def passage_id(title: str, text: str) -> str:
    return content_id("p-", title, text)


def query_id(passage_id: str, sample: int, task: str, query: str) -> str:
    return content_id("q-", passage_id, sample, task, query)


def example_id(query_id: str, positive_id: str) -> str:
    return content_id("e-", query_id, positive_id)
