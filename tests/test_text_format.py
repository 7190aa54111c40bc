"""Text formats: chosen per run, recorded in the saved model, read back by `fret eval` and by
sentence-transformers' own prompts."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.testing.tiny_encoder import build_tiny_encoder
from pipeline.text_format import DEFAULT_TASK, FORMAT_FILE, GECKO, PLAIN, record, resolve
from pipeline.train.data import write_beir_as_examples
from pipeline.train.evaluate import evaluate
from pipeline.train.model import Encoder
from pipeline.train.trainer import TrainConfig, train
from tests.jobkit import small_beir

BEIR = Path("samples/pydoc-retrieval")
TASK = "Given a one-line summary, find the Python documentation it summarises"


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny")


def test_the_two_formats_write_what_they_promise():
    assert GECKO.query("find code", "parse json") == "task: find code | query: parse json"
    assert GECKO.document("json.loads", "Deserialize s.") == "title: json.loads | text: Deserialize s."
    assert GECKO.document("", "Deserialize s.") == "title: none | text: Deserialize s."
    assert PLAIN.query("find code", "parse json") == "parse json"
    assert PLAIN.document("json.loads", "Deserialize s.") == "json.loads\nDeserialize s."
    assert PLAIN.document("", "Deserialize s.") == "Deserialize s."
    # A prompt is what goes in front of a bare query or an untitled text.
    assert GECKO.prompts("find code") == {"query": "task: find code | query: ", "document": "title: none | text: "}
    assert PLAIN.prompts("find code") == {"query": "", "document": ""}


def test_auto_is_the_models_recorded_format_and_a_flag_overrides_it(tmp_path, tiny_encoder):
    assert resolve("auto", tiny_encoder, None).format == PLAIN  # records nothing
    assert resolve("auto", "all-MiniLM-L6-v2", None).source.startswith("default")
    model = tmp_path / "model"
    Encoder(str(tiny_encoder)).save(str(model))
    record(model, resolve("gecko", None, "find code"))
    got = resolve("auto", model, None)
    assert (got.format, got.task, got.source) == (GECKO, "find code", "model")
    assert resolve("auto", model, "other task").task == "other task"
    assert resolve("plain", model, None).format == PLAIN
    # A `fret train --output` folder means its model/.
    (tmp_path / "model").rename(tmp_path / "run-model")
    (tmp_path / "run").mkdir()
    (tmp_path / "run-model").rename(tmp_path / "run" / "model")
    assert resolve("auto", tmp_path / "run", None).format == GECKO
    with pytest.raises(ValueError, match="unknown text format"):
        resolve("fancy", None, None)


def test_prompts_of_another_tool_are_read_as_prefixes(tmp_path, tiny_encoder):
    model = tmp_path / "e5-like"
    Encoder(str(tiny_encoder)).save(str(model))
    config_path = model / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text())
    config["prompts"] = {"query": "query: ", "document": "passage: "}
    config_path.write_text(json.dumps(config))
    got = resolve("auto", model, None)
    assert got.source == "model prompts"
    assert got.format.query("ignored task", "parse {json}") == "query: parse {json}"
    assert got.format.document("", "Deserialize s.") == "passage: Deserialize s."


def test_a_trained_model_carries_its_format_for_sentence_transformers_and_fret_eval(tmp_path, tiny_encoder):
    data = tmp_path / "train.parquet"
    write_beir_as_examples(BEIR, "train", TASK, data)
    summary = train(TrainConfig(data=str(data), output=str(tmp_path / "run"), base_model=str(tiny_encoder),
                                batch_size=8, lr=1e-3, warmup_steps=1, max_steps=3, mrl_dims=(32,),
                                text_format="gecko", eval_task=TASK, progress=False, checkpoint_every=2))
    model_path = summary["model"]
    assert summary["text_format"]["name"] == "gecko" and summary["text_format"]["task"] == TASK
    assert json.loads((Path(model_path) / FORMAT_FILE).read_text())["name"] == "gecko"
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2" / FORMAT_FILE).exists()

    # sentence-transformers, with the prompt names alone, encodes what fret eval encodes.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model_path, device="cpu")
    ours = Encoder(model_path)
    queries = ["parse a JSON document", "sort a list in place"]
    assert np.allclose(st.encode(queries, prompt_name="query", normalize_embeddings=True),
                       ours.encode([GECKO.query(TASK, q) for q in queries]), atol=1e-5)
    assert np.allclose(st.encode(["Deserialize s."], prompt_name="document", normalize_embeddings=True),
                       ours.encode([GECKO.document("", "Deserialize s.")]), atol=1e-5)

    # fret eval takes the recorded format unless told otherwise, and says which it used.
    small = tmp_path / "small"
    small_beir(BEIR, small)
    auto = evaluate(model_path, small)
    assert auto["format"] == {"name": "gecko", "source": "model", "task": TASK}
    flagged = evaluate(model_path, small, text_format="gecko", task=TASK)
    assert flagged["full"]["ndcg@10"] == pytest.approx(auto["full"]["ndcg@10"], abs=1e-9)
    plain = evaluate(model_path, small, text_format="plain")
    assert (plain["format"]["name"], plain["format"]["source"]) == ("plain", "flag")


def test_default_task_is_gecko_s_generic_one():
    assert resolve("gecko", None, None).task == DEFAULT_TASK
