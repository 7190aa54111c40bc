"""Train an embedding model on FRet Parquet shards with sentence-transformers' trainer.

What comes from sentence-transformers (and the transformers Trainer under it): the loop, DDP over
several processes, GradCache, mixed precision, the optimizer, checkpoints with every random state,
exact resume, and the model card. What is fret's: the TrainConfig flags, the streamed Parquet
data in no-duplicate batches, Gecko's loss switches and masks (pipeline.train.losses), the
learning-rate schedule with its floor, train_log.jsonl, and evaluation with fret eval's metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Literal, Optional

import torch

from pipeline import ownership
from pipeline import text_format as formats
from pipeline.ownership import Claim, LocalStore
from pipeline.train.data import Files, count_examples, max_negatives, negative_columns, training_rows
from pipeline.train.losses import CachedGeckoRankingLoss, GeckoRankingLoss, XTRLoss


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
    max_seq_length: Optional[int] = None  # tokens read per text (longer ones are cut); default: the base model's own
    seed: int = 0  # seeds the data order, dropout and any new weights
    shuffle_buffer: int = 10_000  # examples held for shuffling; memory stays flat
    eval_beir: Optional[str] = None  # a BEIR folder evaluated every eval_every steps and at the end
    eval_split: str = "test"  # the qrels split of eval_beir
    eval_task: str = formats.DEFAULT_TASK  # task text of eval queries, and of the saved model's query prompt
    eval_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end
    resume: bool = False  # continue from the newest checkpoint in output/checkpoints
    overwrite: bool = False  # replace an earlier `fret train` in output (only what it wrote; anything else is refused)
    log_every: int = 10  # steps between lines of train_log.jsonl
    device: str = "auto"  # auto (cuda when available), cpu or cuda; pick a GPU with CUDA_VISIBLE_DEVICES
    progress: bool = True  # a progress bar on the console
    nproc: int = 1  # processes trained with DDP (torchrun); batch_size is the global batch, split between them
    mini_batch_size: Optional[int] = None  # GradCache: embed this many texts at a time; memory follows it, not the batch
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 (or fp16) on a GPU that has it, fp32 on CPU

    def __post_init__(self):
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: in-batch negatives need other examples")
        if self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("grad_accum and epochs must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.nproc < 1 or self.batch_size % self.nproc:
            raise ValueError(f"batch_size {self.batch_size} is the global batch: it must split evenly between "
                             f"--nproc {self.nproc} processes")
        if self.device.startswith("cuda:"):
            raise ValueError(f"--device {self.device}: pick the GPU with CUDA_VISIBLE_DEVICES={self.device[5:]} "
                             "and --device cuda (the trainer places each process on its own GPU)")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: --resume continues the run in --output, "
                             "--overwrite starts over")
        if self.mini_batch_size is not None and (self.mini_batch_size < 1 or self.objective == "xtr"):
            raise ValueError("--mini-batch-size (GradCache) must be >= 1 and applies to --objective infonce")
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



def build_loss(config: TrainConfig, model, distributed: bool = False) -> torch.nn.Module:
    """The sentence-transformers loss: XTR, or Gecko's InfoNCE (cached when mini_batch_size is set)
    inside MatryoshkaLoss over the full size and every mrl_dims size below it."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    if config.objective == "xtr":
        return XTRLoss(model, k_train=config.xtr_k_train, temperature=config.temperature,
                       gather_across_devices=distributed)
    settings = dict(temperature=config.temperature, in_batch=config.in_batch, same_tower=config.same_tower,
                    hard_negatives=config.hard_negatives, batch_negatives=config.batch_negatives,
                    symmetric=config.symmetric, mask_duplicates=config.mask_duplicates,
                    negatives_min_dim=config.negatives_min_dim, gather_across_devices=distributed)
    base = (CachedGeckoRankingLoss(model, config.mini_batch_size, **settings) if config.mini_batch_size
            else GeckoRankingLoss(model, **settings))
    dim = model.get_embedding_dimension()
    weights = config.mrl_weights or (1.0,) * (1 + len(config.mrl_dims))
    by_size = {dim: weights[0]}
    for size, weight in zip(config.mrl_dims, weights[1:]):
        if size < dim:  # a size at or above the model's is the full size, trained once
            by_size.setdefault(size, weight)
    dims = sorted(by_size, reverse=True)
    return MatryoshkaLoss(model, base, dims, [by_size[d] for d in dims])


def precision_flags(precision: str, device: str) -> dict:
    """TrainingArguments' bf16/fp16: auto takes bf16 where the GPU has it, else fp16; CPU stays fp32."""
    cuda = device != "cpu" and torch.cuda.is_available()
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision != "fp32" and not cuda:
        raise ValueError(f"--precision {precision} needs a GPU; on CPU the trainer computes in fp32")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


# What fret train writes in --output; --resume keeps the checkpoints and the log it appends to.
TRAIN_CLAIMS = (Claim("model", ("*",)), Claim("checkpoints", ("*",)), Claim("train_log.jsonl"),
                Claim("train_summary.json"))


def take_output(config: TrainConfig) -> None:
    """Claim --output for this run, or refuse: a folder fret did not write, an earlier run without
    --resume or --overwrite. --overwrite removes only the earlier run's files."""
    hint = "pass --resume to continue that run from its newest checkpoint, or --overwrite to start over"
    ownership.take(LocalStore(), str(config.output), "train", TRAIN_CLAIMS, ownership.new_run_id(),
                   overwrite=config.overwrite, resume=config.resume, keep=("checkpoints", "train_log.jsonl"),
                   hint=hint)
    Path(config.output).mkdir(parents=True, exist_ok=True)


def last_checkpoint(output: Path) -> Optional[Path]:
    from transformers.trainer_utils import get_last_checkpoint

    folder = output / "checkpoints"
    found = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    return Path(found) if found else None


class TrainLog:
    """train_log.jsonl, written by the first process only: loss lines, eval lines, epoch notes."""

    def __init__(self, path: Path, enabled: bool):
        self.file = open(path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _callbacks(config: TrainConfig, log: TrainLog, pairs_per_step: int, examples: int,
               text_format: formats.ResolvedFormat):
    from transformers import TrainerCallback

    class FretCallback(TrainerCallback):
        """Loss lines with fret's keys; each checkpoint records the text format, as the model does."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step, self.t0 = state.global_step, time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "epoch" in logs:  # runs before the console's callbacks: they show this epoch
                logs["epoch"] = round(state.global_step * pairs_per_step / max(1, examples), 4)
            if logs and "loss" in logs:
                elapsed = time.perf_counter() - self.t0
                pairs = (state.global_step - self.start_step) * pairs_per_step
                log.write({"step": state.global_step, "epoch": state.global_step * pairs_per_step / max(1, examples),
                           "loss": logs["loss"], "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                           "pairs_per_s": pairs / max(elapsed, 1e-9)})

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                formats.record(Path(args.output_dir) / f"checkpoint-{state.global_step}", text_format)

    return [FretCallback()]


def _epoch_ended(log: TrainLog, examples: int, not_batched: dict, first: bool, epoch: int, left_out: int) -> None:
    """The data stream finished an epoch: log it, and say on the console what it left out."""
    not_batched[epoch] = left_out
    log.write({"epoch": epoch, "examples_not_batched": left_out})
    if first and left_out:
        print(f"[fret train] epoch {epoch + 1}: {left_out} of {examples} examples were not trained on: they could not "
              "join a batch without repeating a positive already in it (in-batch negatives would then be false). "
              "Fewer examples per positive, or a smaller --batch-size, leaves out fewer", file=sys.stderr, flush=True)


def _evaluator(config: TrainConfig, log: TrainLog, text_format: formats.ResolvedFormat):
    from sentence_transformers.base.evaluation import BaseEvaluator

    from pipeline.train.evaluate import DESCRIPTIONS, evaluate
    from pipeline.train.model import Encoder

    class FretBeirEvaluator(BaseEvaluator):
        """fret eval's metrics (pytrec_eval nDCG@10, Recall@10/100) at every Matryoshka size."""

        def __init__(self):
            super().__init__()
            self.primary_metric = "xtr_ndcg@10" if config.objective == "xtr" else "full_ndcg@10"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            encoder = Encoder.around(model)
            dims = [None] + [d for d in config.mrl_dims if d < encoder.dim]
            with torch.no_grad():
                metrics = evaluate(encoder, config.eval_beir, config.eval_split, dims=dims, text_format=text_format,
                                   scoring="xtr" if config.objective == "xtr" else "single")
            log.write({"step": steps, "eval": metrics})
            self.last = metrics
            return {f"{size}_{name}": value for size, values in metrics.items() if size not in DESCRIPTIONS
                    for name, value in values.items()}

    return FretBeirEvaluator()


def train(config: TrainConfig, files: Optional[Files] = None) -> dict:
    """Train; `files` reads the shards (default: the local filesystem; `fret train` passes Beam's).
    Run under torchrun (or `fret train --nproc N`), each process trains its share of every batch."""
    from datasets import Features, IterableDataset, Value
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.util.distributed import get_world_size

    from pipeline.train.model import Encoder

    output = Path(config.output)
    if int(os.environ.get("RANK", "0")) == 0:  # one process claims the folder (pipeline.ownership)
        take_output(config)
    resume_from = last_checkpoint(output) if config.resume else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        config = dataclasses.replace(config, nproc=world)  # torchrun around fret train decides the processes
    elif config.nproc > 1:
        raise ValueError(f"nproc {config.nproc}: start the processes with `fret train --nproc {config.nproc}` or "
                         "torchrun; train() itself runs in one")
    examples = count_examples(config.data, files)
    steps_per_epoch = max(1, examples // (config.batch_size * config.grad_accum))
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    negatives = min(config.num_negatives, max_negatives(config.data, files)) if config.hard_negatives else 0
    text_format = formats.resolve(config.text_format, str(resume_from) if resume_from else config.base_model,
                                  config.eval_task)
    torch.manual_seed(config.seed)  # a projection's new weights
    model = Encoder(str(resume_from) if resume_from else config.base_model, max_seq_length=config.max_seq_length,
                    device="cpu", projection_dim=None if resume_from else config.projection_dim).st
    model.prompts, model.default_prompt_name = text_format.format.prompts(text_format.task), None
    first = int(os.environ.get("RANK", "0")) == 0
    log = TrainLog(output / "train_log.jsonl", first)
    not_batched: dict[int, int] = {}  # per epoch: examples left out of every batch (a repeated positive)
    columns = ["anchor", "positive", *negative_columns(negatives)]
    features = Features({**{c: Value("string") for c in columns}, "label": Value("int64")})
    rows = IterableDataset.from_generator(
        training_rows, features=features,
        gen_kwargs=dict(path=config.data, batch_size=config.batch_size, negatives=negatives, seed=config.seed,
                        shuffle_buffer=config.shuffle_buffer, text_format=text_format.format, files=files,
                        # a closure, not a partial: datasets may copy gen_kwargs, and the counts must land here
                        on_epoch_end=lambda epoch, n: _epoch_ended(log, examples, not_batched, first, epoch, n)))
    evaluating = bool(config.eval_beir and config.eval_every)
    on_cpu = config.device == "cpu" or not torch.cuda.is_available()  # accelerate then runs DDP over gloo
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_steps=total_steps, learning_rate=config.lr,
        weight_decay=config.weight_decay, max_grad_norm=config.grad_clip, seed=config.seed,
        logging_steps=config.log_every, logging_first_step=False, report_to="none", disable_tqdm=not config.progress,
        save_strategy="steps" if config.checkpoint_every else "no", save_steps=config.checkpoint_every or 500,
        eval_strategy="steps" if evaluating else "no", eval_steps=config.eval_every or None,
        use_cpu=on_cpu, dataloader_drop_last=True, dataloader_pin_memory=not on_cpu, lr_scheduler_type="constant",
        # every process reads the stream and takes its slice of each global batch (dispatching whole
        # batches from the first process cannot carry the collator's string fields)
        accelerator_config={"dispatch_batches": False, "split_batches": True},
        **precision_flags(config.precision, config.device))

    class Trainer(SentenceTransformerTrainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            """Linear warmup, then linear decay to --min-lr (transformers' linear schedule ends at 0)."""
            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lambda step: get_lr(step, num_training_steps, config) / config.lr)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    loss = build_loss(config, model, distributed=config.nproc > 1)
    trainer = Trainer(model=model, args=args, train_dataset=rows, loss=loss,
                      evaluator=_evaluator(config, log, text_format) if config.eval_beir else None,
                      callbacks=_callbacks(config, log, config.batch_size * config.grad_accum, examples, text_format))
    # fret's callback first: the console then shows its epoch (examples seen / examples), not the
    # trainer's, which counts steps of an endless stream
    trainer.callback_handler.callbacks.sort(key=lambda c: type(c).__name__ != "FretCallback")
    if not config.progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # its loss dicts are the progress bar's stand-in
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    elapsed = time.perf_counter() - t0
    step = trainer.state.global_step
    pairs = (step - (int(resume_from.name.split("-")[-1]) if resume_from else 0)) * config.batch_size * config.grad_accum
    summary = {"steps": step, "pairs": pairs, "seconds": elapsed, "pairs_per_s": pairs / max(elapsed, 1e-9),
               "model": str(output / "model"), "max_seq_length": int(model.max_seq_length),
               "max_seq_length_source": "--max-seq-length" if config.max_seq_length else "the base model's own", "text_format": text_format.format.to_json(text_format.task),
               "processes": get_world_size(), "train_loss": result.training_loss, "eval": None,
               "examples": examples, "examples_not_batched": [not_batched[e] for e in sorted(not_batched)]}
    if trainer.is_world_process_zero():
        trainer.save_model(str(output / "model"))
        formats.record(output / "model", text_format)
        if config.eval_beir:  # the final model, always (an eval step may also have fallen on the last step)
            final = _evaluator(config, log, text_format)
            final(trainer.model, steps=step)
            summary["eval"] = final.last
        (output / "train_summary.json").write_text(json.dumps(summary, indent=2))
    log.close()
    return summary
