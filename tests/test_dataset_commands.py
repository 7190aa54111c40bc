"""fret inspect / report / export and --config, each on a real job output, each result loaded
back by the library that consumes it."""

import json
import re
import struct
import subprocess
import sys

import pytest
import yaml

from beam_jobs import cli
from beam_jobs.config import ConfigError, expand_config, load_config
from pipeline.testing.stub_llm import StubLLM
from tests.jobkit import run_job, write_jsonl
from tests.test_reliability import PASSAGES, distinct_queries


@pytest.fixture(scope="module")
def job_output(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dataset")
    inp = write_jsonl(tmp / "in.jsonl", PASSAGES[:12] + [{"text": ""}])
    with StubLLM(generate_fn=distinct_queries) as stub:
        out = run_job(inp, tmp / "out", stub.base_url, "--num_negatives", "2", "--negative_strategy", "rank_window",
                      "--negative_window", "2,6")
    assert out["manifest"]["written"] == 12
    return tmp / "out", out


def test_inspect(job_output, capsys):
    path, out = job_output
    assert cli.main(["inspect", str(path), "--rows", "2"]) == 0
    text = capsys.readouterr().out
    assert "examples" in text and " 12 rows in 1 shard(s)" in text and "dead_letters" in text
    assert f"relabel rate  {out['manifest']['relabel_rate']:.1%}" in text
    # the input with empty text is the one dead letter: listed with its reason and count
    assert "dead-lettered by reason:" in text and re.search(r"\n\s+1  empty_text\n", text)
    assert "Given a question, find a passage that answers it" in text  # task mix
    first = out["examples"][0]
    assert "positive_changed: bool" in text and text.count("example e-") == 2
    assert any(e["query"] in text for e in out["examples"]) and "negative  [" in text
    assert first["example_id"] in text or out["examples"][1]["example_id"] in text
    # The token bill, per written example: the stub reports no cache counts, so computed = sent.
    tokens = out["manifest"]["tokens"]
    rc_per_example = tokens["rc"]["prompt_sent"] / 12
    assert "LLM tokens per written example (12 examples" in text
    rc_line = next(line for line in text.splitlines() if line.strip().startswith("rc "))
    assert f"{rc_per_example:.1f}" in rc_line and "100%" in rc_line and "no cache counts" in rc_line


def test_report_card_loads_with_hf_datasets(job_output, tmp_path):
    import shutil

    import datasets

    path, out = job_output
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    assert cli.main(["report", str(copy), "--name", "FRet test set"]) == 0
    card = (copy / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["pretty_name"] == "FRet test set" and "text-retrieval" in meta["task_categories"]
    assert out["manifest"]["llm_model"] in body and out["manifest"]["accounting"] in body
    for name, value in out["manifest"]["prompts"].items():
        assert f"| {name} | `{value}` |" in body
    ql = out["manifest"]["tokens"]["ql"]
    share = ql["prompt_computed"] / ql["prompt_sent"]  # QL read the stub's prefix cache: below 100%
    assert f"| ql | {ql['requests']} | {ql['prompt_sent'] / 12:.1f} | {ql['prompt_computed'] / 12:.1f} | {share:.0%}" in body
    for png in ("scores.png", "query_length.png", "task_mix.png", "negative_ranks.png"):
        data = (copy / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24])[0] > 100  # width
        assert f"]({png})" in body
    # The card's YAML `configs` is what the Hub reads: loading the folder gives the examples.
    ds = datasets.load_dataset(str(copy), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 12 and set(ds["example_id"]) == {e["example_id"] for e in out["examples"]}


def test_export_sentence_transformers_trains(job_output, tmp_path):
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments

    from pipeline.testing.tiny_encoder import build_tiny_encoder

    path, out = job_output
    assert cli.main(["export", str(path), "--format", "sentence-transformers", "--output", str(tmp_path / "st"),
                     "--negatives", "2"]) == 0
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "st" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2", "label"] and ds.num_rows == 12
    by_query = {e["query"]: e for e in out["examples"]}
    row = ds[0]
    example = by_query[row["anchor"]]
    assert row["positive"].endswith(example["positive"]["text"])
    assert row["negative_1"].endswith(example["hard_negatives"][0]["text"])
    # The teacher's fused scores, positive first, as the example holds them
    assert row["label"] == [example["positive_fused"]] + [n["fused"] for n in example["hard_negatives"][:2]]
    # The columns are what sentence-transformers' losses take: one training step runs on them.
    model = SentenceTransformer(str(build_tiny_encoder(tmp_path / "enc")), device="cpu")
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "train"), max_steps=1,
                                                per_device_train_batch_size=4, report_to=[], use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                         loss=losses.MultipleNegativesRankingLoss(model))
    assert trainer.train().training_loss > 0


@pytest.mark.parametrize("teacher_score", ["rc", "ql"])
def test_export_teacher_scores_train_sentence_transformers_distillation_losses(job_output, tmp_path, teacher_score):
    """The `label` column is what MarginMSELoss and DistillKLDivLoss read: one step of each runs,
    and its values are the examples' own scores of the chosen kind."""
    import datasets
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments

    from pipeline.testing.tiny_encoder import build_tiny_encoder

    path, out = job_output
    assert cli.main(["export", str(path), "--format", "sentence-transformers", "--output", str(tmp_path / "st"),
                     "--negatives", "2", "--teacher-score", teacher_score]) == 0
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "st" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    by_query = {e["query"]: e for e in out["examples"]}
    for row in ds:
        example = by_query[row["anchor"]]
        want = [example[f"positive_{teacher_score}"]] + [n[teacher_score] for n in example["hard_negatives"][:2]]
        assert row["label"] == want  # float64 through Parquet: the same numbers
    model = SentenceTransformer(str(build_tiny_encoder(tmp_path / "enc")), device="cpu")
    for loss in (losses.MarginMSELoss(model), losses.DistillKLDivLoss(model)):
        before = [p.detach().clone() for p in model.parameters()]
        args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "train"), max_steps=1,
                                                    per_device_train_batch_size=4, report_to=[], use_cpu=True,
                                                    learning_rate=1e-3)
        result = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss).train()
        assert result.training_loss > 0, type(loss).__name__
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the step moved no weight"


def test_export_without_teacher_scores_and_flagembedding_refuses_none(job_output, tmp_path, capsys):
    import pyarrow.parquet as pq

    path, _ = job_output
    assert cli.main(["export", str(path), "--format", "sentence-transformers", "--output", str(tmp_path / "st"),
                     "--teacher-score", "none"]) == 0
    assert pq.read_schema(next((tmp_path / "st").glob("*.parquet"))).names == ["anchor", "positive", "negative_1"]
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(path), "--format", "flagembedding", "--output", str(tmp_path / "fe"),
                  "--teacher-score", "none"])
    assert e.value.code == 2 and "always carry pos_scores" in capsys.readouterr().err


def test_export_in_gecko_format_writes_what_fret_train_reads(job_output, tmp_path):
    import pyarrow.parquet as pq

    from pipeline.text_format import GECKO
    from pipeline.train.data import stream_examples

    path, out = job_output
    assert cli.main(["export", str(path), "--format", "sentence-transformers", "--output", str(tmp_path / "st"),
                     "--negatives", "1", "--text-format", "gecko"]) == 0
    exported = {(r["anchor"], r["positive"]) for f in sorted((tmp_path / "st").glob("*.parquet"))
                for r in pq.read_table(f).to_pylist()}
    trained_on = {(t.query, t.positive) for t in stream_examples(path, text_format=GECKO)}
    assert exported and exported <= trained_on
    assert all(a.startswith("task: ") and p.startswith("title: ") for a, p in exported)


def test_export_flagembedding_jsonl(job_output, tmp_path):
    import datasets

    path, out = job_output
    assert cli.main(["export", str(path), "--format", "flagembedding", "--output", str(tmp_path / "fe")]) == 0
    # FlagEmbedding reads its training files with datasets' json loader (FlagEmbedding 1.4.2 itself does
    # not import under transformers 5); the fields are its fine-tuning format.
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "fe" / "train.jsonl"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt"} <= set(ds.column_names)
    assert ds.num_rows == 12
    for row in ds:
        assert len(row["pos"]) == 1 and len(row["neg"]) == 2 == len(row["neg_scores"])
        assert row["prompt"] == "Given a question, find a passage that answers it"
    by_query = {e["query"]: e for e in out["examples"]}
    assert all(r["pos_scores"] == [by_query[r["query"]]["positive_fused"]] for r in ds)
    assert cli.main(["export", str(path), "--format", "flagembedding", "--output", str(tmp_path / "rc"),
                     "--teacher-score", "rc"]) == 0
    for line in open(tmp_path / "rc" / "train.jsonl"):
        r = json.loads(line)
        example = by_query[r["query"]]
        assert r["pos_scores"] == [example["positive_rc"]] and r["neg_scores"] == [n["rc"] for n in example["hard_negatives"]]


def test_export_beir_loads_with_beir(job_output, tmp_path):
    from beir.datasets.data_loader import GenericDataLoader

    from pipeline.train.evaluate import load_beir

    path, out = job_output
    assert cli.main(["export", str(path), "--format", "beir", "--output", str(tmp_path / "beir")]) == 0
    corpus, queries, qrels = GenericDataLoader(data_folder=str(tmp_path / "beir")).load(split="train")
    assert len(queries) == 12 and len(qrels) == 12
    for example in out["examples"]:
        assert qrels[example["query_id"]] == {example["positive"]["id"]: 1}
        assert corpus[example["positive"]["id"]]["text"] == example["positive"]["text"]
        for n in example["hard_negatives"]:
            assert n["id"] in corpus
    assert load_beir(str(tmp_path / "beir"), "train")  # our evaluator reads it too


def test_config_file_with_flag_overrides(tmp_path, stub_llm):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:4])
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "input": str(inp), "output": str(tmp_path / "from-file"), "llm-url": stub_llm.base_url,
        "num_neighbors": 3, "negative_strategy": "random", "keep_candidates": False, "progress": False,
        "beam": {"runner": "DirectRunner", "direct_num_workers": 1},
    }))
    out_dir = tmp_path / "from-flag"
    from beam_jobs import fret_job
    from tests.jobkit import read_output

    fret_job.run(["--config", str(config), "--output", str(out_dir), "--num_neighbors", "2"],
                 save_main_session=False)
    out = read_output(out_dir)
    effective = json.loads(out["manifest"]["config"])
    assert effective["num_neighbors"] == 2  # the flag wins
    assert effective["negative_strategy"] == "random" and effective["keep_candidates"] is False  # from the file
    assert effective["output"] == str(out_dir) and not (tmp_path / "from-file").exists()
    assert all(e["candidates"] is None for e in out["examples"])


@pytest.mark.parametrize("content, message", [
    ({"num_neighbours": 3}, "num_neighbours: not a fret flag; did you mean num_neighbors"),
    ({"num_neighbors": "many"}, "num_neighbors: Input should be a valid integer"),
    ({"negative_strategy": "best"}, "negative_strategy: Input should be 'top', 'lowest', 'random'"),
    (["a", "list"], "must be a mapping"),
])
def test_config_errors_are_clear(tmp_path, content, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_config_cli_reports_errors_without_traceback(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("temperature: hot\n")
    proc = subprocess.run([sys.executable, "-m", "beam_jobs.cli", "run", "--config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "temperature: Input should be a valid number" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert expand_config(["--x", "1"]) == ["--x", "1"]
