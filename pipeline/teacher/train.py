"""Train the teacher: a small Llama that does FRet's three jobs, from offline docstrings, on CPU.

One causal LM with its own byte-level BPE tokenizer and chat template, trained on the job's
rendered prompts with the loss on the answers only. The shared head of a batch's prompts
(instruction + few-shot examples) is encoded once and its keys/values repeated for the batch,
so a step costs what the pair-specific parts cost. Fixed seed and step count: the same
packages give the same teacher.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from pipeline.testing.tiny_llm import CHAT_TEMPLATE, SPECIAL_TOKENS
from pipeline.teacher.corpus import docstring_pairs, samples_held_out, site_packages_dirs
from pipeline.teacher.examples import TextRenderer, TrainingText, training_texts

ROOT = Path(__file__).resolve().parents[2]
TEACHER_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    vocab_size: int = 8192
    hidden_size: int = 256
    layers: int = 4
    intermediate_size: int = 768
    max_steps: int = 700
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    per_package: int = 1500  # pairs per top-level package
    max_pairs: int = 12000  # pairs drawn (seeded) from the corpus; 3 texts each
    max_rest_tokens: int = 512  # longer pair-specific parts are skipped in training
    seed: int = 0


@dataclasses.dataclass
class Encoded:
    job: str
    shared: tuple[int, ...]
    rest: list[int]
    answer: list[int]


def _prompts():
    from pipeline.prompts import available, load_prompt

    return [load_prompt(name, version) for name, versions in available().items() for version in versions]


def build_tokenizer(corpus: Sequence[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>", model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode(texts: Sequence[TrainingText], tokenizer, max_rest_tokens: int) -> tuple[list[Encoded], int]:
    """Token ids per text; a text whose parts do not tokenize as the whole would is dropped
    (the server tokenizes the whole prompt), and counted."""
    backend = tokenizer.backend_tokenizer

    def ids(strings: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch(strings, add_special_tokens=False)]

    shared_texts = sorted({t.shared for t in texts})
    shared_ids = dict(zip(shared_texts, map(tuple, ids(shared_texts))))
    rests = ids([t.rest for t in texts])
    answers = ids([t.answer for t in texts])
    wholes = ids([t.shared + t.rest for t in texts])
    out, dropped = [], 0
    for t, rest, answer, whole in zip(texts, rests, answers, wholes):
        if t.job == "query_generation":
            answer = answer + [tokenizer.eos_token_id]
        if len(rest) > max_rest_tokens or list(shared_ids[t.shared]) + rest != whole:
            dropped += 1
            continue
        out.append(Encoded(t.job, shared_ids[t.shared], rest, answer))
    return out, dropped


def batches(examples: Sequence[Encoded], batch_size: int, rng: random.Random) -> list[list[Encoded]]:
    """Batches of one shared head each, of similar lengths (little padding), in random order."""
    groups: dict[tuple[int, ...], list[Encoded]] = {}
    for e in examples:
        groups.setdefault(e.shared, []).append(e)
    out = []
    for group in groups.values():
        group = group[:]
        rng.shuffle(group)
        for start in range(0, len(group), batch_size * 16):  # sort within chunks, as encode() does
            chunk = sorted(group[start:start + batch_size * 16], key=lambda e: len(e.rest) + len(e.answer))
            out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def batch_loss(model, batch: Sequence[Encoded], pad_id: int):
    """Mean over examples of the mean cross-entropy of each answer's tokens."""
    import torch

    shared = torch.tensor([batch[0].shared])
    cache = model(shared, use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(batch))
    width = max(len(e.rest) + len(e.answer) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    rows, cols, targets, weights = [], [], [], []
    for b, e in enumerate(batch):
        seq = e.rest + e.answer
        ids[b, :len(seq)] = torch.tensor(seq)
        for j in range(len(e.rest), len(seq)):  # the hidden state at j-1 predicts token j
            rows.append(b)
            cols.append(j - 1)
            targets.append(seq[j])
            weights.append(1.0 / len(e.answer))
    hidden = model.model(ids, past_key_values=cache).last_hidden_state
    logits = model.lm_head(hidden[torch.tensor(rows), torch.tensor(cols)])
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="none")
    return (losses * torch.tensor(weights)).sum() / len(batch)


def lr_at(step: int, config: TeacherConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_teacher(out_dir: str | Path, config: TeacherConfig = TeacherConfig(), log=print) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    pairs = docstring_pairs(site_packages_dirs(), samples_held_out(ROOT), config.per_package)
    rng.shuffle(pairs)
    pairs = pairs[:config.max_pairs]
    log(f"[teacher] {len(pairs)} docstring pairs from {len({p.package for p in pairs})} packages")

    tokenizer = build_tokenizer([f"{p.title}\n{p.summary}\n{p.body}" for p in pairs]
                                + [t.body for t in _prompts()] * 20, config.vocab_size)

    def chat(message: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)

    texts = training_texts(pairs, TextRenderer(chat), config.seed)
    examples, dropped = encode(texts, tokenizer, config.max_rest_tokens)
    log(f"[teacher] {len(examples)} training texts ({dropped} dropped: too long or split across a token); "
        f"{time.perf_counter() - started:.0f}s")

    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers, num_attention_heads=config.hidden_size // 64,
        num_key_value_heads=config.hidden_size // 64, head_dim=64, max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, torch_dtype="float32"))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    model.train()
    schedule: list[list[Encoded]] = []
    curve, window = [], []
    for step in range(config.max_steps):
        if not schedule:
            schedule = batches(examples, config.batch_size, rng)
        batch = schedule.pop()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss = batch_loss(model, batch, tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window.append((batch[0].job, loss.item()))
        if (step + 1) % 50 == 0 or step + 1 == config.max_steps:
            by_job = {j: [v for k, v in window if k == j] for j in sorted({k for k, _ in window})}
            means = {j: round(sum(v) / len(v), 3) for j, v in by_job.items()}
            curve.append({"step": step + 1, "loss": means, "s": round(time.perf_counter() - started)})
            log(f"[teacher] step {step + 1}/{config.max_steps} loss {means} {time.perf_counter() - started:.0f}s")
            window = []

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # vLLM reads generation defaults from here; keep them neutral.
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "do_sample": True}))
    (out / "teacher.json").write_text(json.dumps({
        "version": TEACHER_VERSION, "config": dataclasses.asdict(config), "pairs": len(pairs),
        "packages": sorted({p.package for p in pairs}), "texts": len(examples), "dropped": dropped,
        "parameters": sum(p.numel() for p in model.parameters()), "train_s": round(time.perf_counter() - started),
        "curve": curve}, indent=1))
    return out


def build_teacher(out_dir: str | Path, config: TeacherConfig = TeacherConfig(), log=print) -> Path:
    """The teacher cached at out_dir, trained first when it is not there. Trained in a side
    folder and renamed, so a killed build never leaves half a teacher behind."""
    out = Path(out_dir)
    if (out / "teacher.json").exists():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"[teacher] training the teacher LLM into {out} (once; about 20 minutes on 2 cores)")
    train_teacher(partial, config, log)
    partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--max-steps", type=int, default=TeacherConfig.max_steps)
    args = parser.parse_args(argv)
    print(train_teacher(args.out_dir, dataclasses.replace(TeacherConfig(), max_steps=args.max_steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
