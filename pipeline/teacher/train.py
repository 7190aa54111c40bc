"""Train the teacher: a small Llama that does FRet's three jobs, from offline docstrings, on CPU.

One causal LM with its own byte-level BPE tokenizer and chat template, trained on the job's
rendered prompts with the loss on the answers only. The shared head of a batch's prompts
(instruction + few-shot examples) is encoded once and its keys/values repeated for the batch,
so a step costs what the pair-specific parts cost. Fixed seed, data order and step count;
a rebuild is still not bit-identical: the BPE trainer breaks ties between equally frequent
merges in no fixed order.
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

from pipeline.llm.local_model import train_tokenizer, write_generation_config
from pipeline.teacher.corpus import docstring_pairs, samples_held_out, site_packages_dirs
from pipeline.teacher.model import llama_config
from pipeline.teacher.examples import TASKS, TextRenderer, TrainingText, distractor, groups, training_texts

ROOT = Path(__file__).resolve().parents[2]
TEACHER_VERSION = 2  # 2: trained on the RC prompt v2 (graded examples in the head)
TEACHER_DIR = f"teacher-v{TEACHER_VERSION}"  # its folder in the cache: a new version never reuses an old teacher


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    vocab_size: int = 8192
    hidden_size: int = 256
    layers: int = 4
    intermediate_size: int = 768
    max_steps: int = 750
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    per_package: int = 1500  # pairs per top-level package
    max_pairs: int = 12000  # pairs drawn (seeded) from the corpus; 3 texts each
    max_rest_tokens: int = 512  # longer pair-specific parts are skipped in training
    text_share: float = 0.25  # share of each prompt's pair-specific tokens that also get a language-model loss
    text_weight: float = 0.5
    validation_pairs: int = 300  # held out from training: true passage vs a close one, by QL and by RC
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


def encode_aligned(texts: Sequence[TrainingText], tokenizer, max_rest_tokens: int) -> list[Encoded | None]:
    """Token ids per text, None where a text is too long or its parts do not tokenize as the
    whole would (the server tokenizes the whole prompt)."""
    backend = tokenizer.backend_tokenizer

    def ids(strings: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch(strings, add_special_tokens=False)]

    shared_texts = sorted({t.shared for t in texts})
    shared_ids = dict(zip(shared_texts, map(tuple, ids(shared_texts))))
    rests = ids([t.rest for t in texts])
    answers = ids([t.answer for t in texts])
    wholes = ids([t.shared + t.rest for t in texts])
    out: list[Encoded | None] = []
    for t, rest, answer, whole in zip(texts, rests, answers, wholes):
        if t.job == "query_generation":
            answer = answer + [tokenizer.eos_token_id]
        fits = len(rest) <= max_rest_tokens and list(shared_ids[t.shared]) + rest == whole
        out.append(Encoded(t.job, shared_ids[t.shared], rest, answer) if fits else None)
    return out


def encode(texts: Sequence[TrainingText], tokenizer, max_rest_tokens: int) -> tuple[list[Encoded], int]:
    """The texts that encode (see encode_aligned), and how many were dropped."""
    aligned = encode_aligned(texts, tokenizer, max_rest_tokens)
    kept = [e for e in aligned if e is not None]
    return kept, len(aligned) - len(kept)


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


def _answer_and_text_logits(model, batch: Sequence[Encoded], pad_id: int, text_positions: Sequence[Sequence[int]]):
    """Log-probabilities of each answer token, and of the chosen rest tokens, for a batch of one
    shared head: the head is encoded once and its keys/values repeated for every row."""
    import torch

    cache = model.model(torch.tensor([batch[0].shared]), use_cache=True).cache
    cache.batch_repeat_interleave(len(batch))
    width = max(len(e.rest) + len(e.answer) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    rows, cols, targets, is_answer = [], [], [], []
    for b, e in enumerate(batch):
        seq = e.rest + e.answer
        ids[b, :len(seq)] = torch.tensor(seq)
        for j in list(text_positions[b]) + list(range(len(e.rest), len(seq))):  # state j-1 predicts token j
            rows.append(b)
            cols.append(j - 1)
            targets.append(seq[j])
            is_answer.append(j >= len(e.rest))
    hidden = model.model(ids, cache=cache).last_hidden_state
    logits = model.lm_head(hidden[torch.tensor(rows), torch.tensor(cols)])
    token_logprobs = -torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="none")
    return token_logprobs, torch.tensor(rows), torch.tensor(is_answer)


def batch_loss(model, batch: Sequence[Encoded], pad_id: int, text_share: float = 0.0, text_weight: float = 0.0,
               rng: random.Random | None = None):
    """Mean over examples of the answer's mean cross-entropy, plus `text_weight` times the mean
    cross-entropy of a `text_share` sample of the prompt's own pair-specific tokens (plain
    language modelling on the docstrings: far more signal per step than the answers alone)."""
    import torch

    rng = rng or random.Random(0)
    text_positions = [sorted(rng.sample(range(1, len(e.rest)), int(text_share * (len(e.rest) - 1))))
                      if text_share > 0 and len(e.rest) > 1 else [] for e in batch]
    logprobs, rows, is_answer = _answer_and_text_logits(model, batch, pad_id, text_positions)
    answer_counts = torch.tensor([len(e.answer) for e in batch], dtype=torch.float32)
    text_counts = torch.tensor([max(1, len(p)) for p in text_positions], dtype=torch.float32)
    weights = torch.where(is_answer, 1.0 / answer_counts[rows], text_weight / text_counts[rows])
    return -(logprobs * weights).sum() / len(batch)


def answer_logprobs(model, batch: Sequence[Encoded], pad_id: int) -> list[float]:
    """log P(answer | prompt) of each row, summed over the answer's tokens (what QL scores)."""
    import torch

    with torch.no_grad():
        logprobs, rows, _ = _answer_and_text_logits(model, batch, pad_id, [[] for _ in batch])
    return torch.zeros(len(batch)).index_add_(0, rows, logprobs).tolist()


def pairwise_accuracy(model, tokenizer, renderer: TextRenderer, pool: Sequence, held_out: range,
                      rng: random.Random, batch_size: int = 16) -> dict[str, float]:
    """On pairs the teacher never saw (pool[i] for i in held_out): how often QL (log P(summary |
    passage)) and RC (log P(top label)) score the true passage above a close passage of the
    same package from the pool (a sibling where there is one)."""
    siblings, by_package = groups(pool)
    trials = [(pool[i], d) for i in held_out if (d := distractor(pool, i, siblings, by_package, rng))]
    if not trials:
        return {}
    top = renderer.rc.labels["highly_relevant"]["text"]
    # likelihood() pairs a passage with its own summary; here each passage is scored on the query's.
    texts = {"ql": [dataclasses.replace(renderer.likelihood(p, TASKS[0]), answer=" " + q.summary)
                    for q, d in trials for p in (q, d)],
             "rc": [renderer.relevance(q, p, TASKS[0], "highly_relevant") for q, d in trials for p in (q, d)]}
    assert all(t.answer == top for t in texts["rc"])
    result = {"pairs": len(trials)}
    for name, items in texts.items():
        encoded, dropped = encode(items, tokenizer, max_rest_tokens=10**6)
        if dropped:
            raise ValueError(f"{dropped} validation texts do not tokenize in parts as whole")
        scores: list[float] = []
        for start in range(0, len(encoded), batch_size):
            scores += answer_logprobs(model, encoded[start:start + batch_size], tokenizer.pad_token_id)
        result[name] = round(sum(t > d for t, d in zip(scores[0::2], scores[1::2])) / len(trials), 4)
    return result


def lr_at(step: int, config: TeacherConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_teacher(out_dir: str | Path, config: TeacherConfig = TeacherConfig(), log=print) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    pairs = docstring_pairs(site_packages_dirs(), samples_held_out(ROOT), config.per_package)
    rng.shuffle(pairs)
    validation = pairs[config.max_pairs:config.max_pairs + config.validation_pairs]
    pairs = pairs[:config.max_pairs]
    log(f"[teacher] {len(pairs)} docstring pairs from {len({p.package for p in pairs})} packages")

    tokenizer = train_tokenizer([f"{p.title}\n{p.summary}\n{p.body}" for p in pairs]
                                + [t.body for t in _prompts()] * 20, config.vocab_size)

    def chat(message: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)

    renderer = TextRenderer(chat)
    texts = training_texts(pairs, renderer, config.seed)
    examples, dropped = encode(texts, tokenizer, config.max_rest_tokens)
    log(f"[teacher] {len(examples)} training texts ({dropped} dropped: too long or split across a token); "
        f"{time.perf_counter() - started:.0f}s")

    model = LlamaForCausalLM(llama_config(tokenizer, config.hidden_size, config.layers, config.intermediate_size))
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
        loss = batch_loss(model, batch, tokenizer.pad_token_id, config.text_share, config.text_weight, rng)
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

    model.eval()
    accuracy = pairwise_accuracy(model, tokenizer, renderer, pairs + validation,
                                 range(len(pairs), len(pairs) + len(validation)), random.Random(config.seed))
    log(f"[teacher] held-out pairs, true passage scored above a close one: {accuracy}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    write_generation_config(out, tokenizer)
    (out / "teacher.json").write_text(json.dumps({
        "version": TEACHER_VERSION, "config": dataclasses.asdict(config), "pairs": len(pairs),
        "packages": sorted({p.package for p in pairs}), "texts": len(examples), "dropped": dropped,
        "parameters": sum(p.numel() for p in model.parameters()), "train_s": round(time.perf_counter() - started),
        "validation": accuracy, "curve": curve}, indent=1))
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
