"""The larger teacher's trainer (train_packed) and assembly: what it learns from, what it keeps,
and that a probe scores what vLLM would score."""

from __future__ import annotations

import json
import math
import random

import pytest

from pipeline.teacher.train import Encoded
from pipeline.teacher.train_packed import Row, epoch_rows, to_row, token_batches


def _row(tag: int) -> Row:
    return Row([tag], {})


def test_each_pair_sees_every_relevance_label_once_in_three_epochs_and_a_missing_one_is_skipped():
    gen, ql = _row(0), _row(1)
    top, middle, low = _row(2), _row(3), _row(4)
    per_pair = [[gen, ql, top, middle, low], [gen, ql, top, None, low]]
    seen = [[r.ids[0] for r in epoch_rows(per_pair, epoch)] for epoch in range(3)]
    first = [rows[2] for rows in seen]  # pair 0's label per epoch
    second = [rows[5] for rows in seen]
    assert sorted(first) == [2, 3, 4]
    assert 3 not in second and set(second) == {2, 4}
    assert all(rows[:2] == [0, 1] and rows[3:5] == [0, 1] for rows in seen)


def test_rows_weigh_each_answer_as_one_and_the_passage_as_text_weight_except_for_relevance():
    e = Encoded("query_likelihood", (7, 8, 9), [10, 11, 12, 13], [20, 21])
    row = to_row(e, text_weight=0.5)
    assert row.ids == [7, 8, 9, 10, 11, 12, 13, 20, 21]
    answer = {j: w for j, w in row.weights.items() if j >= 7}
    text = {j: w for j, w in row.weights.items() if j < 7}
    assert sorted(answer) == [7, 8] and sum(answer.values()) == pytest.approx(1.0)
    assert sorted(text) == [3, 4, 5, 6] and sum(text.values()) == pytest.approx(0.5)
    rc = to_row(Encoded("relevance_classification", (7,), [10, 11], [30]), text_weight=0.5)
    assert rc.weights == {3: 1.0}


def test_token_batches_keep_every_row_once_within_the_budget():
    rng = random.Random(0)
    rows = [Row(list(range(rng.randrange(1, 300))), {}) for _ in range(500)]
    batches = token_batches(rows, tokens_per_batch=1024, rng=random.Random(1))
    flat = [id(r) for b in batches for r in b]
    assert sorted(flat) == sorted(id(r) for r in rows)
    assert all(len(b) == 1 or len(b) * max(len(r.ids) for r in b) <= 1024 for b in batches)


def _tiny_pack(tmp_path):
    from pipeline.llm.local_model import train_tokenizer
    from pipeline.prompts import load_prompt
    from pipeline.teacher.pack import TOKENIZER_DIR

    texts = ["json.dumps\nSerialize obj to a JSON formatted str.\nThe arguments have the same meaning as in dump.",
             "csv.reader\nReturn a reader object that will iterate over lines in the given csvfile."]
    texts += [load_prompt(n).body for n in ("query_likelihood", "relevance_classification")]
    tokenizer = train_tokenizer(texts * 3, 400)
    tokenizer.save_pretrained(tmp_path / "pack" / TOKENIZER_DIR)
    return tmp_path / "pack", tokenizer


def test_weights_saved_in_shards_assemble_into_a_model_that_loads_and_scores_the_same(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    import pipeline.teacher.train_packed as tp
    from pipeline.teacher.assemble import assemble
    from pipeline.teacher.model import llama_config

    pack, tokenizer = _tiny_pack(tmp_path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tokenizer, 64, 2, 96))
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(tp, "SHARD_BYTES", 40_000)  # below the embedding's 51 KB: no file could hold it
    with pytest.raises(ValueError, match="embed_tokens"):
        tp.save_weights(state, tmp_path / "run")
    monkeypatch.setattr(tp, "SHARD_BYTES", 60_000)  # forces several shards
    files = tp.save_weights(state, tmp_path / "run")
    assert len(files) > 1 and all((tmp_path / "run" / f).stat().st_size <= 60_000 + 4096 for f in files)
    (tmp_path / "run" / "teacher_packed.json").write_text(json.dumps(
        {"config": {"hidden_size": 64, "layers": 2, "intermediate_size": 96}, "weights": files}))
    out = assemble(pack, tmp_path / "run", tmp_path / "teacher")
    served = AutoModelForCausalLM.from_pretrained(out)
    assert served.config.head_dim == 64 and served.config.tie_word_embeddings
    ids = torch.tensor([tokenizer.encode("Serialize obj to a JSON formatted str.")])
    model.load_state_dict({k: v.float() for k, v in state.items()})  # the bf16-rounded original
    with torch.no_grad():
        assert torch.allclose(served(ids).logits, model(ids).logits, atol=1e-5)
    assert json.loads((out / "teacher.json").read_text())["version"] == "packed"


def test_a_probe_scores_ql_and_rc_as_whole_sequences_would(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    from pipeline.teacher.model import llama_config
    from pipeline.teacher.train_packed import prepare_probe, probe_scores, score_probe

    _, tokenizer = _tiny_pack(tmp_path)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tokenizer, 64, 2, 96)).eval()
    docs = {"a": ["json.dumps", "Serialize obj to a JSON formatted str."],
            "b": ["csv.reader", "Return a reader object over lines in the given csvfile."],
            "c": ["csv.writer", "Return a writer object."]}
    probe = {"queries": {"q": "Serialize an object as JSON"}, "qrels": {"q": {"a": 1}}, "docs": docs,
             "candidates": {"q": ["b", "a", "c"]}}
    prepared = prepare_probe(tokenizer, probe)
    cpu = torch.device("cpu")
    scores = probe_scores(model, prepared, tokenizer.pad_token_id, batch_size=2, device=cpu)
    assert len(scores) == 6  # QL and RC for each of the 3 candidates
    for i, seq, first in prepared.items:  # the same scores, one whole unpadded sequence at a time
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([seq])).logits[0], dim=-1)
        if first is None:
            assert scores[i] == pytest.approx(logprobs[-1, prepared.label_ids].tolist(), abs=1e-4)
        else:
            assert tokenizer.decode(seq[first:]).strip() == "Serialize an object as JSON"
            assert scores[i] == pytest.approx(sum(logprobs[j - 1, seq[j]].item() for j in range(first, len(seq))),
                                              abs=1e-3)
    ndcg = score_probe(model, prepared, tokenizer.pad_token_id, batch_size=2, device=cpu)
    assert ndcg["retrieval"] == pytest.approx(round(1 / math.log2(3), 4))  # the relevant passage at rank 2
