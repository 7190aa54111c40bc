"""What sentence-transformers' trainer gives fret train: several processes (DDP) that train as one,
and GradCache batches that train as the whole batch does."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.testing.tiny_encoder import build_tiny_encoder
from pipeline.train.data import write_beir_as_examples
from pipeline.train.model import Encoder
from pipeline.train.trainer import TrainConfig, train

BEIR = Path("samples/pydoc-retrieval")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "train.parquet"
    write_beir_as_examples(BEIR, "train", "Find the documentation", path)
    return path


@pytest.fixture(scope="module")
def encoder_without_dropout(tmp_path_factory) -> Path:
    """Dropout draws differ per process (as in any DDP run), so the equality checks turn it off."""
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny", dropout=0.0)


def losses(output: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(output / "train_log.jsonl")) if "loss" in r]


def distance(a: Path, b: Path) -> float:
    """L2 distance between two models' weights. Not the largest single weight's difference: Adam
    moves a weight whose gradient is float noise by a full step either way, so one weight's
    difference hinges on the last bits of a float; the whole vector's does not."""
    wa, wb = Encoder(str(a), device="cpu").state_dict(), Encoder(str(b), device="cpu").state_dict()
    return sum(float(((wa[k].float() - wb[k].float()) ** 2).sum()) for k in wa) ** 0.5


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path, shards, encoder_without_dropout):
    common = ["--data", str(shards), "--base-model", str(encoder_without_dropout), "--batch-size", "8",
              "--max-steps", "10", "--log-every", "1", "--lr", "1e-3", "--warmup-steps", "1", "--mrl-dims", "32",
              "--progress", "false"]

    def fret_train(output: Path, *extra: str) -> None:
        done = subprocess.run([sys.executable, "-m", "beam_jobs.cli", "train", "--output", str(output), *common, *extra],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]

    fret_train(tmp_path / "one")
    fret_train(tmp_path / "two", "--nproc", "2")  # torchrun, DDP over gloo, 4 rows per process
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 10
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4, (one, two)
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 10
    # the same model within float noise: far below what training moved the weights
    moved = distance(encoder_without_dropout, tmp_path / "one" / "model")
    assert distance(tmp_path / "one" / "model", tmp_path / "two" / "model") < 1e-2 * moved


def test_gradcache_mini_batches_train_as_the_whole_batch(tmp_path, shards, encoder_without_dropout):
    def run(name: str, **extra) -> Path:
        train(TrainConfig(data=str(shards), output=str(tmp_path / name), base_model=str(encoder_without_dropout),
                          batch_size=8, lr=1e-3, warmup_steps=1, max_steps=4, mrl_dims=(32,), progress=False,
                          log_every=1, **extra))
        return tmp_path / name

    whole, cached = run("whole"), run("cached", mini_batch_size=3)  # 3 + 3 + 2 texts per forward pass
    assert max(abs(a - b) for a, b in zip(losses(whole), losses(cached))) < 1e-4
    moved = distance(encoder_without_dropout, whole / "model")
    assert distance(whole / "model", cached / "model") < 1e-2 * moved


@pytest.mark.parametrize("flags, message", [
    (["--device", "cuda:1"], "CUDA_VISIBLE_DEVICES=1"),
    (["--nproc", "3"], "split evenly"),
    (["--objective", "xtr", "--mini-batch-size", "4"], "applies to --objective infonce"),
    (["--precision", "bf16", "--device", "cpu"], "needs a GPU"),
])
def test_flags_the_trainer_cannot_honour_are_refused_with_what_to_do(tmp_path, shards, flags, message, capsys):
    from beam_jobs.cli import main as fret

    code = fret(["train", "--data", str(shards), "--output", str(tmp_path / "out"), "--batch-size", "8", *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out" / "model").exists()
