"""Train an embedding model on FRet Parquet shards: one visible loop, in the manner of nanoGPT."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from pipeline import text_format as formats
from pipeline.train.data import Files, count_examples, epoch_batches
from pipeline.train.losses import GeckoInfoNCE, MatryoshkaLoss, TextKeys, XTRLoss
from pipeline.train.model import Encoder


@dataclasses.dataclass
class TrainConfig:
    data: str  # FRet examples: a folder of Parquet shards, a file or a glob
    output: str  # where the model (sentence-transformers folder), checkpoints and log go
    base_model: str = "all-MiniLM-L6-v2"  # any sentence-transformers or HF encoder
    projection_dim: Optional[int] = None  # add a linear projection to this size
    text_format: Literal["auto", "gecko", "plain"] = "auto"  # auto: the base model's recorded format, else plain
    objective: Literal["infonce", "xtr"] = "infonce"  # Gecko single-vector, or XTR multi-vector
    temperature: float = 0.05  # τ of the softmax (Gecko: 0.05)
    in_batch: bool = True  # other queries' positives as negatives
    same_tower: bool = False  # other queries as negatives (Gecko's eq. 3 has them; off measured better, bench/README)
    hard_negatives: bool = True  # the mined hard negatives
    batch_negatives: bool = True  # every hard negative of the batch counts for every query
    symmetric: bool = False  # also each positive picks its query among the batch's queries; the two averaged
    mask_duplicates: bool = True  # a text equal to a row's own positive or query is not its negative
    num_negatives: int = 1  # hard negatives per example taken from the shards
    mrl_dims: tuple[int, ...] = (256, 128, 64)  # Matryoshka sizes trained besides the full size
    mrl_weights: tuple[float, ...] = ()  # loss weight per size, the full size first, then mrl_dims; empty: 1 each
    negatives_min_dim: int = 0  # Matryoshka sizes below this train without hard negatives (in-batch terms only)
    xtr_k_train: int = 128  # XTR: tokens each query token retrieves from the batch
    batch_size: int = 32  # examples per micro-batch: each query's in-batch negatives are the others
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak learning rate, reached after warmup (chosen on short runs; bench/README)
    min_lr: float = 0.0  # the linear decay ends here
    warmup_steps: Optional[int] = None  # when set, this many steps of linear warmup, whatever warmup_ratio says
    warmup_ratio: float = 0.1  # linear warmup over ceil(ratio x all optimizer steps)
    weight_decay: float = 0.0  # AdamW decay on weight matrices (never on biases or norms)
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    epochs: int = 1  # passes over the data
    max_steps: Optional[int] = None  # stop early after this many optimizer steps
    max_seq_length: int = 128  # tokens per text; longer texts are truncated
    seed: int = 0  # seeds the data order, dropout and any new weights
    shuffle_buffer: int = 10_000  # examples held for shuffling; memory stays flat
    eval_beir: Optional[str] = None  # a BEIR folder evaluated every eval_every steps and at the end
    eval_split: str = "test"  # the qrels split of eval_beir
    eval_task: str = formats.DEFAULT_TASK  # task text of eval queries, and of the saved model's query prompt
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end
    resume: bool = False  # continue from the newest checkpoint in output/checkpoints
    log_every: int = 10  # steps between lines of train_log.jsonl
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1...
    progress: bool = True  # a progress bar on the console

    def __post_init__(self):
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: in-batch negatives need other examples")
        if self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("grad_accum and epochs must be >= 1")
        self.mrl_dims = tuple(self.mrl_dims)
        self.mrl_weights = tuple(float(w) for w in self.mrl_weights)
        if self.mrl_weights and len(self.mrl_weights) != 1 + len(self.mrl_dims):
            raise ValueError(f"mrl_weights needs {1 + len(self.mrl_dims)} weights, one for the full size and one "
                             f"per mrl_dims size {self.mrl_dims}; got {len(self.mrl_weights)}")
        if any(w < 0 for w in self.mrl_weights) or (self.mrl_weights and not any(self.mrl_weights)):
            raise ValueError("mrl_weights must be >= 0, and not all 0")


def field_help() -> dict[str, str]:
    """Each TrainConfig field's comment: the one description, shown by `fret train --help`."""
    import inspect
    import re

    found = dict(re.findall(r"^\s+(\w+): [^=\n]+(?:=[^#\n]*)?#\s*(.+)$", inspect.getsource(TrainConfig), re.M))
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in found]
    if missing:
        raise RuntimeError(f"TrainConfig fields without a comment (their --help text): {missing}")
    return found


def warmup_steps(total_steps: int, config: TrainConfig) -> int:
    """A ratio scales with the run: ten fixed steps are 43% of a 23-step epoch and 1% of 1,000."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return math.ceil(config.warmup_ratio * total_steps)


def get_lr(step: int, total_steps: int, config: TrainConfig) -> float:
    """Linear warmup to lr, then linear decay to min_lr at total_steps."""
    warmup = warmup_steps(total_steps, config)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if step >= total_steps:
        return config.min_lr
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.min_lr + (config.lr - config.min_lr) * (1 - progress)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator a run draws from: torch's CPU and CUDA ones, numpy's and Python's."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Put back what rng_state() took; a checkpoint from before this held torch's CPU state only."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])


def build_loss(config: TrainConfig, dim: int) -> torch.nn.Module:
    if config.objective == "xtr":
        return XTRLoss(k_train=config.xtr_k_train, temperature=config.temperature)
    base = GeckoInfoNCE(config.temperature, config.in_batch, config.same_tower, config.hard_negatives,
                        config.batch_negatives, config.symmetric)
    weights = config.mrl_weights or (1.0,) * (1 + len(config.mrl_dims))
    by_size = {dim: weights[0]}
    for size, weight in zip(config.mrl_dims, weights[1:]):
        if size < dim:  # a size at or above the model's is the full size, trained once
            by_size.setdefault(size, weight)
    dims = sorted(by_size, reverse=True)
    return MatryoshkaLoss(base, dims, [by_size[d] for d in dims], config.negatives_min_dim)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norm weights; the fused kernel where torch has it."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=config.lr)


def batch_loss(model: Encoder, loss_fn: torch.nn.Module, batch, config: TrainConfig) -> torch.Tensor:
    queries = [t.query for t in batch]
    positives = [t.positive for t in batch]
    k = max((len(t.negatives) for t in batch), default=0) if config.hard_negatives else 0
    if config.objective == "xtr":
        # XTR scores every query against every document of the batch: the real negatives are
        # simply more documents. Padding them with positives would make a positive compete with itself.
        negatives = [n for t in batch for n in t.negatives[:k]]
        q = model(model.tokenize(queries))
        d = model(model.tokenize(positives + negatives))
        return loss_fn(q["token_embeddings"], q["attention_mask"].bool(), d["token_embeddings"],
                       d["attention_mask"].bool())
    # InfoNCE takes (B, k) negatives: ragged lists are padded, and the mask hides the padding.
    negatives = [n for t in batch for n in (list(t.negatives[:k]) + [t.positive] * (k - len(t.negatives[:k])))]
    # One forward pass per column, as sentence-transformers does: one call over positives and
    # negatives pads both to the longer column's length (measured 7% slower per pair).
    q = model.embed(queries)  # (B, d)
    p = model.embed(positives)  # (B, d)
    n = model.embed(negatives).reshape(len(batch), k, -1) if k else None  # (B, k, d)
    mask = torch.tensor([[j < len(t.negatives) for j in range(k)] for t in batch], device=q.device) if k else None
    keys = text_keys(queries, positives, negatives, k, q.device) if config.mask_duplicates else None
    return loss_fn(q, p, n, mask, keys)


def text_keys(queries: list[str], positives: list[str], negatives: list[str], k: int, device) -> TextKeys:
    """Equal texts get equal keys: documents share one numbering, queries have their own."""
    documents: dict[str, int] = {}
    doc_keys = [documents.setdefault(text, len(documents)) for text in positives + negatives]
    query_numbers: dict[str, int] = {}
    query_keys = [query_numbers.setdefault(text, len(query_numbers)) for text in queries]
    doc_tensor = torch.tensor(doc_keys, device=device)  # (B + B*k,)
    batch = len(queries)
    return TextKeys(torch.tensor(query_keys, device=device), doc_tensor[:batch],
                    doc_tensor[batch:].reshape(batch, k) if k else None)


def checkpoint_dirs(output: Path) -> list[Path]:
    return sorted((output / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(model: Encoder, optimizer, state: dict, output: Path,
                    text_format: formats.ResolvedFormat) -> Path:
    path = output / "checkpoints" / f"step-{state['step']:07d}"
    tmp = path.with_name(path.name + ".tmp")
    model.save(str(tmp))
    formats.record(tmp, text_format)
    torch.save({"optimizer": optimizer.state_dict(), "state": state, "rng": rng_state()}, tmp / "trainer_state.pt")
    tmp.rename(path)  # a checkpoint is either complete or absent
    return path


def train(config: TrainConfig, files: Optional[Files] = None) -> dict:
    """Train; `files` reads the shards (default: the local filesystem; `fret train` passes Beam's)."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    start_state = {"step": 0, "epoch": 0, "batches_in_epoch": 0}
    base = config.base_model
    resume_from = checkpoint_dirs(output)[-1] if config.resume and checkpoint_dirs(output) else None
    model = Encoder(str(resume_from) if resume_from else base, max_seq_length=config.max_seq_length,
                    device=config.device, projection_dim=None if resume_from else config.projection_dim)
    model.train()
    text_format = formats.resolve(config.text_format, str(resume_from) if resume_from else base, config.eval_task)
    loss_fn = build_loss(config, model.dim)
    optimizer = build_optimizer(model, config)
    if resume_from:
        saved = torch.load(resume_from / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(saved["optimizer"])
        start_state = saved["state"]
        set_rng_state(saved["rng"] if "rng" in saved else {"torch": saved["torch_rng"]})
    examples = count_examples(config.data, files)
    steps_per_epoch = max(1, examples // (config.batch_size * config.grad_accum))
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    log_path = output / "train_log.jsonl"
    log = open(log_path, "a", encoding="utf-8")
    history: list[dict] = []

    def evaluate_now(step: int) -> Optional[dict]:
        if not config.eval_beir:
            return None
        from pipeline.train.evaluate import evaluate

        dims = [None] + [d for d in config.mrl_dims if d < model.dim]
        with torch.no_grad():
            metrics = evaluate(model, config.eval_beir, config.eval_split, dims=dims, text_format=text_format,
                               scoring="xtr" if config.objective == "xtr" else "single")
        record = {"step": step, "eval": metrics}
        log.write(json.dumps(record) + "\n")
        log.flush()
        history.append(record)
        return metrics

    step, epoch, skip = start_state["step"], start_state["epoch"], start_state["batches_in_epoch"]
    pairs_done, t0 = 0, time.perf_counter()
    progress = _progress(total_steps, step, config.progress)
    while step < total_steps and epoch < config.epochs:
        dropped: list = []
        batches = epoch_batches(config.data, config.batch_size, config.num_negatives, config.seed, epoch,
                                config.shuffle_buffer, skip, files, text_format.format, dropped)
        batch_index = skip
        micro: list = []
        for batch in batches:
            micro.append(batch)
            batch_index += 1
            if len(micro) < config.grad_accum:
                continue
            # 1. learning rate for this step
            lr = get_lr(step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # 2. evaluate and checkpoint when due (the state after `step` steps)
            if step > start_state["step"]:
                if config.eval_every and step % config.eval_every == 0:
                    evaluate_now(step)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    state = {"step": step, "epoch": epoch, "batches_in_epoch": batch_index - len(micro)}
                    save_checkpoint(model, optimizer, state, output, text_format)
            # 3. accumulate gradients over the micro-batches
            loss_value = 0.0
            for mb in micro:
                loss = batch_loss(model, loss_fn, mb, config) / config.grad_accum
                loss.backward()
                loss_value += float(loss.detach())
                pairs_done += len(mb)
            micro = []
            # 4. clip
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            # 5. step, 6. zero
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            # 7. log
            if step % config.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - t0
                record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr,
                          "pairs_per_s": pairs_done / max(elapsed, 1e-9)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                progress(step, loss_value)
            if step >= total_steps:
                break
        else:
            # what could not fill a batch without a repeated positive: logged, never silent
            log.write(json.dumps({"epoch": epoch, "examples_not_batched": len(dropped)}) + "\n")
            epoch, skip = epoch + 1, 0
            continue
        skip = batch_index  # stopped mid-epoch: a resume continues from here
    elapsed = time.perf_counter() - t0
    if config.checkpoint_every and not (output / "checkpoints" / f"step-{step:07d}").exists():
        save_checkpoint(model, optimizer, {"step": step, "epoch": epoch, "batches_in_epoch": skip}, output,
                        text_format)
    model.save(str(output / "model"))
    formats.record(output / "model", text_format)
    final = evaluate_now(step)
    log.close()
    summary = {"steps": step, "pairs": pairs_done, "seconds": elapsed, "pairs_per_s": pairs_done / max(elapsed, 1e-9),
               "model": str(output / "model"), "text_format": text_format.format.to_json(text_format.task),
               "eval": final}
    (output / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return lambda step, loss: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="train", unit="step")

    def update(step: int, loss: float) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.refresh()

    return update
