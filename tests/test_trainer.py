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
    both = TrainConfig(data="x", output="y", lr=1.0, warmup_steps=4, warmup_ratio=0.5, min_lr=0.0)
    assert [get_lr(s, 12, both) for s in (0, 3, 4)] == pytest.approx([0.25, 1.0, 1.0])  # steps win
    by_ratio = TrainConfig(data="x", output="y", lr=1.0, warmup_ratio=0.25, min_lr=0.0)
    # ceil(0.25 x 10) = 3 warmup steps; then linear decay over 7
    assert [get_lr(s, 10, by_ratio) for s in (0, 2, 3, 10)] == pytest.approx([1 / 3, 1.0, 1.0, 0.0])


def test_streamed_shards_are_formatted_and_batched(train_shards):
    triples = list(stream_examples(train_shards))
    assert triples[0].query.startswith(f"task: {TASK} | query: ")
    assert triples[0].positive.startswith("title: ") and " | text: " in triples[0].positive
    batches = list(batched(triples + triples[:3], 32, drop_last=False))
    assert all(len({t.positive for t in b}) == len(b) for b in batches)  # no false in-batch negatives
    assert sum(len(b) for b in batches) == len(triples) + 3  # repeats wait for a later batch, never dropped
    # As the trainer batches (drop_last): full batches only; every repeat that waits is placed,
    # and what is dropped at the end is reported and could not have filled a batch.
    repeats = triples[:40] + triples[5:15] + triples[40:] + [triples[0]] * 5  # the last five share one positive
    dropped: list = []
    full = list(batched(repeats, 32, drop_last=True, dropped=dropped))
    assert all(len(b) == 32 and len({t.positive for t in b}) == 32 for b in full)
    assert sum(len(b) for b in full) + len(dropped) == len(repeats)
    assert dropped and len({t.positive for t in dropped}) < 32


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
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").iterdir())] == ["checkpoint-3", "checkpoint-6"]
    # Lose everything after step 3, as a crash would, and resume: with dropout on (the tiny encoder
    # has 0.1), the same weights need every random state and the data position put back.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-6")
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
    assert metrics["queries"] == 60
    # The chunked, heap-merged search must equal XTR scored by brute force over every token, on
    # the texts of the format the model records (the trainer evaluates with it).
    from pipeline.text_format import resolve

    recorded = resolve("auto", summary["model"], None)
    assert recorded.source == "model"
    expected = brute_force_xtr_ndcg(Encoder(summary["model"]), small, k_prime=1000, text_format=recorded)
    assert metrics["ndcg@10"] == pytest.approx(expected, abs=1e-9)
    # fret eval scores the same model the same way when asked for XTR, from the training output folder.
    from beam_jobs.cli import main as fret

    assert fret(["eval", "--model", str(tmp_path / "xtr"), "--beir", str(small), "--scoring", "xtr"]) == 0


def brute_force_xtr_ndcg(encoder, folder, k_prime, text_format):
    """XTR inference written plainly: all token similarities at once, top-k' per query token over
    the whole corpus, imputation with m_i."""
    from pipeline.train.evaluate import load_beir

    fmt, task = text_format.format, text_format.task

    corpus, queries, qrels = load_beir(folder, "test")
    doc_ids = sorted(corpus)

    def tokens(texts):
        out = []
        with torch.no_grad():
            encoder.eval()
            for t in texts:
                f = encoder(encoder.tokenize([t]))
                v = torch.nn.functional.normalize(f["token_embeddings"][0], dim=-1)
                out.append(v[f["attention_mask"][0].bool()].numpy())
        return out

    docs = tokens([fmt.document(*corpus[d]) for d in doc_ids])
    owner = np.concatenate([np.full(len(v), i) for i, v in enumerate(docs)])
    matrix = np.concatenate(docs)
    scores = []
    for qid in sorted(queries):
        q = tokens([fmt.query(task, queries[qid])])[0]
        sims = q @ matrix.T  # (Lq, all tokens)
        top = np.argsort(-sims, axis=1)[:, :k_prime]
        per_doc = np.zeros(len(doc_ids))
        for i in range(len(q)):
            best = np.full(len(doc_ids), sims[i, top[i]].min())  # m_i for documents token i did not retrieve
            np.maximum.at(best, owner[top[i]], sims[i, top[i]])
            per_doc += best
        retrieved = {owner[t] for row in top for t in row}
        order = sorted(retrieved, key=lambda d: (-per_doc[d], doc_ids[d]))[:100]
        scores.append(ndcg_at_k([doc_ids[d] for d in order], qrels[qid]))
    return float(np.mean(scores))


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


@pytest.fixture(scope="module")
def shards_with_negatives(tmp_path_factory) -> Path:
    """The BEIR train split with a hard negative on most rows (another query's document), ragged on purpose."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.train.data import beir_example_rows

    rows = beir_example_rows(BEIR, "train", TASK)
    for i, row in enumerate(rows):
        other = rows[(i + 7) % len(rows)]["positive"]
        row["hard_negatives"] = [] if i % 4 == 0 else [dict(other)]
    folder = tmp_path_factory.mktemp("neg") / "examples"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-00000-of-00001.parquet")
    return folder


def held_loss(model_path, config) -> float:
    """The loss fret train minimises, in eval mode (no dropout), over the first batches of the
    trainer's own stream: the same batches before and after training."""
    import itertools

    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    from pipeline.text_format import resolve
    from pipeline.train.data import max_negatives, training_rows
    from pipeline.train.trainer import build_loss

    model = Encoder(str(model_path), device="cpu").st
    model.eval()
    loss_fn = build_loss(config, model)
    negatives = min(config.num_negatives, max_negatives(config.data))
    rows = list(itertools.islice(training_rows(config.data, config.batch_size, negatives, config.seed, 10_000,
                                               resolve("plain", None, None).format), 4 * config.batch_size))
    collate = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    values = []
    with torch.no_grad():
        for start in range(0, len(rows), config.batch_size):
            batch = collate(rows[start:start + config.batch_size])
            columns = ["anchor", "positive"] + [f"negative_{i + 1}" for i in range(negatives)]
            features = [{k[len(c) + 1:]: v for k, v in batch.items() if k.startswith(c + "_")} for c in columns]
            values.append(float(loss_fn(features, batch["label"])))
    return float(np.mean(values))


def test_rows_without_enough_negatives_repeat_their_positive_and_say_how_many_are_real(shards_with_negatives):
    """The trainer's rows keep columns even (sentence-transformers batches need it): a row with no
    mined negative repeats its positive, and its label 0 lets the loss mask the copy
    (tests/test_losses.py checks the masking)."""
    import itertools

    from pipeline.text_format import PLAIN
    from pipeline.train.data import max_negatives, training_rows

    assert max_negatives(shards_with_negatives) == 1
    rows = list(itertools.islice(training_rows(str(shards_with_negatives), 8, 1, 0, 100, PLAIN), 64))
    assert all(set(r) == {"anchor", "positive", "negative_1", "label"} for r in rows)
    assert {r["label"] for r in rows} == {0, 1}
    assert all((r["negative_1"] == r["positive"]) == (r["label"] == 0) for r in rows)
    for start in range(0, 64, 8):  # every batch of 8 consecutive rows has distinct positives
        assert len({r["positive"] for r in rows[start:start + 8]}) == 8


@pytest.mark.parametrize("objective", ["infonce", "xtr"])
def test_training_on_shards_with_hard_negatives(tmp_path, shards_with_negatives, tiny_encoder, objective):
    """From an absolute glob, as `fret train` is given it; the loss must fall on data with negatives."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    # 32 rows seen several times: the loss on them must fall clearly, whatever batch noise does
    small = tmp_path / "small"
    small.mkdir()
    pq.write_table(ds.dataset(shards_with_negatives).to_table().slice(0, 32), small / "part-0.parquet")
    pattern = str(small.resolve()) + "/*.parquet"
    config = tiny_config(tmp_path / "run", pattern, base=tiny_encoder, objective=objective, max_steps=24, epochs=8,
                         xtr_k_train=16, lr=1e-2, log_every=1)
    summary = train(config)
    log = [json.loads(line) for line in open(tmp_path / "run" / "train_log.jsonl")]
    losses = [r["loss"] for r in log if "loss" in r]
    assert summary["steps"] == 24 and len(losses) == 24
    assert all(np.isfinite(losses))
    # the same batches before and after, in eval mode (no dropout): one logged batch's loss
    # drifts with the batch, so a fall is judged on fixed batches, by a margin noise cannot give
    before, after = held_loss(tiny_encoder, config), held_loss(tmp_path / "run" / "model", config)
    assert after < 0.9 * before, (before, after)


def test_fret_train_reads_absolute_globs_and_job_output_folders(tmp_path, shards_with_negatives, tiny_encoder,
                                                                capsys):
    from beam_jobs.cli import main as fret

    job_output = tmp_path / "job"
    (job_output / "_journal" / "score").mkdir(parents=True)
    import shutil

    shutil.copytree(shards_with_negatives, job_output / "examples")
    (job_output / "_journal" / "score" / "entry.parquet").write_bytes(b"not an example shard")
    common = ["--base-model", str(tiny_encoder), "--batch-size", "8", "--max-steps", "1", "--mrl-dims", "",
              "--progress", "false"]
    assert fret(["train", "--data", str(job_output), "--output", str(tmp_path / "a"), *common]) == 0
    glob = str(shards_with_negatives.resolve() / "*.parquet")
    assert fret(["train", "--data", glob, "--output", str(tmp_path / "b"), *common]) == 0
    assert fret(["train", "--data", str(tmp_path / "nothing" / "*.parquet"), "--output", str(tmp_path / "c"),
                 *common]) == 2
    assert "no Parquet files" in capsys.readouterr().err


def test_fret_eval_on_a_folder_without_a_model_says_where_it_is(tmp_path, capsys):
    from beam_jobs.cli import main as fret

    (tmp_path / "empty").mkdir()
    assert fret(["eval", "--model", str(tmp_path / "empty"), "--beir", str(BEIR)]) == 2
    assert "its model is in model/" in capsys.readouterr().err


def test_every_train_flag_has_help(capsys):
    from beam_jobs.cli import main as fret

    with pytest.raises(SystemExit):
        fret(["train", "--help"])
    text = capsys.readouterr().out
    import dataclasses

    from pipeline.train.trainer import TrainConfig, field_help

    helps = field_help()
    for field in dataclasses.fields(TrainConfig):
        assert helps[field.name] and helps[field.name].split()[0] in text, field.name


def test_one_encoding_serves_every_matryoshka_size(tiny_encoder):
    """evaluate encodes each text once and truncates; it must rank exactly as encoding at each size."""
    import functools

    from pipeline.train.evaluate import search

    model = Encoder(str(tiny_encoder))
    corpus = [json.loads(line) for line in (BEIR / "corpus.jsonl").read_text().splitlines()[:80]]
    doc_ids, doc_texts = [d["_id"] for d in corpus], [d["text"] for d in corpus]
    queries = [d["title"] or d["text"][:40] for d in corpus[:20]]
    once = search(model.encode, model.encode, queries, doc_ids, doc_texts, k=10, dims=[None, 16])
    tolerance = 1e-5  # truncating a normalised vector and encoding at the size differ in the last bits
    for dim in (None, 16):
        encode = functools.partial(model.encode, dim=dim)
        scores = encode(queries) @ encode(doc_texts).T  # (Q, D): the reference, encoded at this size
        for qi, ranked in enumerate(once[dim]):
            got = scores[qi, [doc_ids.index(d) for d in ranked]]
            assert (np.diff(got) <= tolerance).all(), (dim, qi)  # in score order
            tenth = np.sort(scores[qi])[::-1][9]
            assert got.min() >= tenth - tolerance  # and nothing better was left out
    # Length-sorted batches give the input order back.
    texts = ["a", "a much longer text than the others", "mid length"]
    assert np.allclose(model.encode(texts, batch_size=2), np.concatenate([model.encode([t]) for t in texts]),
                       atol=1e-5)


def test_a_trained_model_reads_as_many_tokens_as_its_base(tmp_path, train_shards, tiny_encoder):
    """Issue 36, defect 5: the Encoder set 128 tokens over the model's own length, and the saved model
    kept the cut. A shorter length is the user's choice, and the summary says which was used."""
    from sentence_transformers import SentenceTransformer

    own = SentenceTransformer(str(tiny_encoder), device="cpu").max_seq_length
    assert own != 128
    summary = train(tiny_config(tmp_path / "own", train_shards, base=tiny_encoder, max_steps=2))
    assert SentenceTransformer(summary["model"], device="cpu").max_seq_length == own == summary["max_seq_length"]
    assert summary["max_seq_length_source"] == "the base model's own"
    cut = train(tiny_config(tmp_path / "cut", train_shards, base=tiny_encoder, max_steps=2, max_seq_length=16))
    assert SentenceTransformer(cut["model"], device="cpu").max_seq_length == 16 == cut["max_seq_length"]
    assert cut["max_seq_length_source"] == "--max-seq-length"


def test_fret_eval_reads_each_text_to_the_models_own_length(tmp_path, capsys):
    """Each document says what it is about only after 150 words of shared boilerplate: read to 128
    tokens they are one and the same text; read to MiniLM's own 256, each is found by its query."""
    from beam_jobs import cli

    topics = ["volcanoes", "submarines", "orchids", "glaciers", "bicycles", "lighthouses", "beekeeping",
              "telescopes", "saffron", "tornadoes"]
    filler = " ".join(["This annual report follows the standard template of the records office."] * 14)
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"{filler} The "
                                                              f"section at the end is all about {t}."}) + "\n"
                                                  for i, t in enumerate(topics)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"facts about {t}"}) + "\n"
                                                   for i, t in enumerate(topics)))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                               + "".join(f"q{i}\td{i}\t1\n" for i in range(len(topics))))
    assert cli.main(["eval", "--model", "all-MiniLM-L6-v2", "--beir", str(folder)]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["max_seq_length"] == {"tokens": 256, "source": "the model's own"}
    assert cli.main(["eval", "--model", "all-MiniLM-L6-v2", "--beir", str(folder), "--max-seq-length", "128"]) == 0
    cut = json.loads(capsys.readouterr().out)
    assert cut["max_seq_length"] == {"tokens": 128, "source": "given"}
    assert own["full"]["ndcg@10"] > 0.9 > 0.7 > cut["full"]["ndcg@10"], (own["full"], cut["full"])


def test_train_refuses_an_earlier_run_and_overwrite_replaces_only_what_it_wrote(tmp_path, train_shards, tiny_encoder):
    """Newcomer's finding 5: a second fret train silently replaced the model, and train_log.jsonl
    kept describing the old run. The folder's marker (pipeline.ownership) decides."""
    from pipeline.ownership import OwnershipError

    out = tmp_path / "run"
    train(tiny_config(out, train_shards, base=tiny_encoder, max_steps=2, log_every=1))
    first_log = (out / "train_log.jsonl").read_text()
    with pytest.raises(OwnershipError, match="not empty.*--resume.*--overwrite"):
        train(tiny_config(out, train_shards, base=tiny_encoder, max_steps=2))
    (out / "notes.md").write_text("my notes")
    with pytest.raises(OwnershipError, match="notes.md"):
        train(tiny_config(out, train_shards, base=tiny_encoder, max_steps=2, overwrite=True))
    (out / "notes.md").unlink()
    train(tiny_config(out, train_shards, base=tiny_encoder, max_steps=3, log_every=1, overwrite=True))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert (out / "train_log.jsonl").read_text() != first_log and [r["step"] for r in log if "loss" in r] == [1, 2, 3]


def test_the_console_says_what_no_batch_could_take_and_shows_the_logs_epoch(tmp_path, train_shards, tiny_encoder,
                                                                          capsys):
    """train_log.jsonl said examples_not_batched: 95 of 383 each epoch while the console said
    nothing, and the console showed the trainer's epoch (0.5) where the log said 0.8355."""
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(train_shards).to_pylist()[:40]
    rows += [{**row, "query": row["query"] + " (again)"} for row in rows[:12]]  # 12 positives twice
    data = tmp_path / "repeats.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    summary = train(TrainConfig(data=str(data), output=str(tmp_path / "out"), base_model=str(tiny_encoder),
                                batch_size=8, epochs=2, log_every=1, mrl_dims=(32,), progress=True))
    out, err = capsys.readouterr()
    left_out = summary["examples_not_batched"][0]
    assert summary["examples"] == 52 and left_out > 0
    assert f"epoch 1: {left_out} of 52 examples were not trained on" in err
    logged = [json.loads(line) for line in open(tmp_path / "out" / "train_log.jsonl")]
    assert {"epoch": 0, "examples_not_batched": left_out} in logged
    losses = [r for r in logged if "loss" in r]
    shown = [float(e) for e in re.findall(r"'epoch': '?([0-9.]+)", out + err)]
    assert len(shown) >= len(losses) > 2
    assert shown[:len(losses)] == pytest.approx([r["epoch"] for r in losses], abs=1e-3)


def test_the_same_seed_trains_the_same_weights_beside_a_cpu_hog(tmp_path, train_shards, tiny_encoder):
    """Issue 36, defect 4: `fret train --seed S` twice, the second run beside a busy loop on every
    core, gives the same weights bit for bit (bench/determinism.py does it at the bench's size,
    each run in a fresh process: the same result)."""
    import hashlib
    import os
    import subprocess
    import sys

    def weights_digest(name: str, seed: int) -> str:
        train(TrainConfig(data=str(train_shards), output=str(tmp_path / name), base_model=str(tiny_encoder),
                          batch_size=16, max_steps=6, mrl_dims=(32,), seed=seed, progress=False,
                          shuffle_buffer=64))
        state = Encoder(str(tmp_path / name / "model"), device="cpu").state_dict()
        return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()

    quiet = weights_digest("quiet", 0)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        loaded = weights_digest("loaded", 0)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert loaded == quiet
    assert weights_digest("other", 1) != quiet  # the seed does decide something


def test_fret_eval_gives_sentence_transformers_ir_evaluators_ndcg(tiny_encoder):
    """The same model, texts and binary qrels: fret eval's nDCG@10 is InformationRetrievalEvaluator's
    (bench/eval_equals_st.py shows it for all-MiniLM-L6-v2 at full size and 64 dimensions)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    from pipeline.text_format import PLAIN
    from pipeline.train.evaluate import load_beir

    ours = evaluate(str(tiny_encoder), BEIR, "test", dims=[None], text_format="plain")["full"]["ndcg@10"]
    corpus, queries, qrels = load_beir(BEIR, "test")
    relevant = {q: {d for d, s in docs.items() if s > 0} for q, docs in qrels.items() if q in queries}
    evaluator = InformationRetrievalEvaluator(
        {q: PLAIN.query("", queries[q]) for q in relevant if relevant[q]},
        {d: PLAIN.document(*corpus[d]) for d in corpus}, {q: docs for q, docs in relevant.items() if docs},
        write_csv=False, batch_size=64)
    scores = evaluator(SentenceTransformer(str(tiny_encoder), device="cpu"))
    theirs = scores[next(k for k in scores if k.endswith("cosine_ndcg@10"))]
    assert ours == pytest.approx(theirs, abs=1e-6)
