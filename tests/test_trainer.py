"""The trainer: it improves a real model on real data, saves sentence-transformers folders,
resumes exactly, and makes soups."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.testing.tiny_encoder import build_tiny_encoder
from pipeline.train.data import batched, stream_examples, write_beir_as_examples
from pipeline.train.evaluate import evaluate, ndcg_at_k, recall_at_k
from pipeline.train.model import Encoder
from pipeline.train.soup import soup
from pipeline.train.trainer import TrainConfig, get_lr, train

BEIR = Path("samples/pydoc-retrieval")
TASK = "Given a one-line summary, find the Python documentation it summarises"


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "train.parquet"
    write_beir_as_examples(BEIR, "train", TASK, path)
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny")


def test_metrics_hand_computed():
    assert ndcg_at_k(["a", "b"], {"b": 1}) == pytest.approx(1 / np.log2(3))
    assert ndcg_at_k(["a"], {"x": 1}) == 0.0
    assert recall_at_k(["a", "b", "c"], {"c": 1, "z": 1}, 2) == 0.0
    assert recall_at_k(["a", "b", "c"], {"c": 1, "z": 1}, 3) == 0.5


def test_lr_schedule_is_a_pure_function():
    config = TrainConfig(data="x", output="y", lr=1.0, warmup_steps=4, min_lr=0.0)
    assert [get_lr(s, 12, config) for s in (0, 3, 4, 8, 12)] == pytest.approx([0.25, 1.0, 1.0, 0.5, 0.0])


def test_streamed_shards_are_formatted_and_batched(train_shards):
    triples = list(stream_examples(train_shards))
    assert triples[0].query.startswith(f"task: {TASK} | query: ")
    assert triples[0].positive.startswith("title: ") and " | text: " in triples[0].positive
    batches = list(batched(triples + triples[:3], 32, drop_last=False))
    assert all(len({t.positive for t in b}) == len(b) for b in batches)  # no false in-batch negatives
    assert sum(len(b) for b in batches) == len(triples) + 3  # repeats wait for a later batch, never dropped


def test_training_on_real_data_beats_the_base_model(tmp_path, train_shards):
    base = evaluate("all-MiniLM-L6-v2", BEIR, "test", TASK)["full"]["ndcg@10"]
    config = TrainConfig(data=str(train_shards), output=str(tmp_path / "run"), batch_size=32, lr=5e-5,
                         warmup_steps=3, epochs=1, mrl_dims=(128,), eval_beir=str(BEIR), eval_task=TASK,
                         progress=False)
    summary = train(config)
    trained = summary["eval"]["full"]["ndcg@10"]
    print(f"nDCG@10 base {base:.4f} -> trained {trained:.4f}; MRL 128: {summary['eval']['128']['ndcg@10']:.4f}")
    assert trained > base + 0.005
    log = [json.loads(line) for line in open(tmp_path / "run" / "train_log.jsonl")]
    assert any("loss" in r for r in log) and "eval" in log[-1]

    # The saved folder is a sentence-transformers model with the trainer's own embeddings.
    from sentence_transformers import SentenceTransformer

    texts = ["task: x | query: how do I parse JSON", "title: json.loads | text: Deserialize s"]
    ours = Encoder(summary["model"]).encode(texts)
    theirs = SentenceTransformer(summary["model"], device="cpu").encode(texts, normalize_embeddings=True)
    assert np.allclose(ours, theirs, atol=1e-5)


def tiny_config(tmp_path, data, **kw):
    settings = dict(data=str(data), output=str(tmp_path), base_model=str(kw.pop("base")), batch_size=8,
                    lr=1e-3, warmup_steps=1, max_steps=6, mrl_dims=(32,), progress=False, seed=3)
    settings.update(kw)
    return TrainConfig(**settings)


def weights(path) -> dict:
    return Encoder(str(path), device="cpu").state_dict()


def test_resume_from_a_checkpoint_gives_the_same_weights(tmp_path, train_shards, tiny_encoder):
    import shutil

    config = tiny_config(tmp_path / "run", train_shards, base=tiny_encoder, checkpoint_every=3)
    full = train(config)
    finished = weights(full["model"])
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["step-0000003", "step-0000006"]
    # Lose everything after step 3, as a crash would, and resume.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000006")
    shutil.rmtree(tmp_path / "run" / "model")
    resumed = train(tiny_config(tmp_path / "run", train_shards, base=tiny_encoder, checkpoint_every=3, resume=True))
    assert resumed["steps"] == 6 and resumed["pairs"] == 3 * 8  # only the last three steps ran again
    again = weights(resumed["model"])
    assert all(torch.allclose(finished[k].float(), again[k].float(), atol=1e-6) for k in finished)
    base = weights(tiny_encoder)
    assert not all(torch.allclose(finished[k].float(), base[k].float()) for k in finished if k in base)


def test_gradient_accumulation_and_projection(tmp_path, train_shards, tiny_encoder):
    summary = train(tiny_config(tmp_path / "acc", train_shards, base=tiny_encoder, grad_accum=2, max_steps=2,
                                projection_dim=48, mrl_dims=(24, 12)))
    model = Encoder(summary["model"])
    assert model.dim == 48 and summary["pairs"] == 2 * 2 * 8


def test_xtr_objective_trains_and_scores(tmp_path, train_shards, tiny_encoder):
    small = tmp_path / "beir"
    (small / "qrels").mkdir(parents=True)
    lines = (BEIR / "corpus.jsonl").read_text().splitlines()[:60]
    (small / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    ids = {json.loads(l)["_id"].removeprefix("d:") for l in lines}
    queries = [l for l in (BEIR / "queries.jsonl").read_text().splitlines()
               if json.loads(l)["_id"].removeprefix("q:") in ids]
    (small / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (small / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q:{i}\td:{i}\t1\n" for i in sorted(ids)))
    summary = train(tiny_config(tmp_path / "xtr", train_shards, base=tiny_encoder, objective="xtr", xtr_k_train=16,
                                max_steps=3, eval_beir=str(small)))
    metrics = summary["eval"]["xtr"]
    assert metrics["queries"] == 60 and 0.0 < metrics["ndcg@10"] <= 1.0


def test_soup_averages_weights(tmp_path, train_shards, tiny_encoder):
    a = train(tiny_config(tmp_path / "a", train_shards, base=tiny_encoder, seed=1, max_steps=2))["model"]
    b = train(tiny_config(tmp_path / "b", train_shards, base=tiny_encoder, seed=2, max_steps=2))["model"]
    out = soup([a, b], str(tmp_path / "soup"))
    wa, wb, ws = weights(a), weights(b), weights(out)
    for key in wa:
        if wa[key].is_floating_point():
            assert torch.allclose(ws[key], (wa[key] + wb[key]) / 2, atol=1e-6), key
    with pytest.raises(ValueError):
        soup([a], str(tmp_path / "one"))
