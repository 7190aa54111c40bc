"""The teacher's data and training step: what it reads, what it renders, what it learns from."""

from __future__ import annotations

import json
import random
import re

import pytest

from pipeline.generation import render_generation_prompt
from pipeline.prompts import load_prompt
from pipeline.rerank import Candidate, ql_request, rc_prompt
from pipeline.teacher.corpus import DocPair, docstring_pairs, held_out_keys, split_docstring
from pipeline.teacher.examples import TASKS, TextRenderer, query_length_knob, training_texts
from schemas import Passage, QueryKnobs, QueryRecord

BODY = "It walks the list once and keeps the running total.\nArgs:\n    items: the numbers to add up.\n"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _function(name, summary, body=BODY):
    indented = "\n".join("    " + line if line else "" for line in body.splitlines())
    return f'def {name}(items):\n    """{summary}\n\n{indented}\n    """\n\n\n'


def test_docstring_pairs_parse_without_importing_skip_vendored_and_tests_and_hold_out_samples(tmp_path):
    site = tmp_path / "site-packages"
    # Importing this module would exit the interpreter: the reader must only parse it.
    _write(site / "alpha" / "__init__.py", "raise SystemExit('imported')\n"
           + _function("total", "Return the sum of a list of numbers.")
           + 'class Bag:\n    """Hold items in no particular order.\n\n    A bag keeps duplicates, unlike a set,'
             ' and never sorts what it holds, whatever their kind.\n    """\n\n'
             '    def count(self, x):\n        """Return how many times x is in the bag.\n\n'
             '        Counting walks every item once, so it takes time in proportion to the size of the bag.\n        """\n'
           + _function("held", "Return the number of items in a deque."))
    _write(site / "alpha" / "tests" / "test_x.py", _function("t", "Check that total adds numbers up."))
    _write(site / "pip" / "__init__.py", _function("vendored", "Return the path of the pip executable."))
    _write(site / "beta" / "__init__.py", "".join(_function(f"f{i}", f"Compute the beta value number {i}.")
                                                  for i in range(3)))
    held_out = held_out_keys(["Return the number of items in a deque."])

    pairs = docstring_pairs([site], held_out, per_package=2)

    titles = [p.title for p in pairs]
    assert titles == ["alpha.total", "alpha.Bag", "beta.f0", "beta.f1"]  # cap 2 per package, file order
    assert pairs[0].summary == "Return the sum of a list of numbers."
    assert pairs[0].body.startswith("It walks the list once") and "Return the sum" not in pairs[0].body
    assert {p.package for p in pairs} == {"alpha", "beta"}
    assert "alpha.Bag.count" in [p.title for p in docstring_pairs([site], held_out, per_package=10)]
    assert "alpha.held" not in [p.title for p in docstring_pairs([site], held_out, per_package=10)]


def test_split_docstring_follows_the_pydoc_sets_rule():
    assert split_docstring("Return x.\n\n" + "b" * 100) is None  # summary too short
    assert split_docstring("Return the value of x.\n\nshort") is None  # body too short
    assert split_docstring("Parameters of the call follow:\n\n" + "b" * 100) is None
    assert split_docstring("Return the value of x.\n\n" + "b" * 2000)[1] == "b" * 1500


def _pairs():
    return [DocPair("alpha", f"alpha.f{i}", f"Return the alpha value number {i}.", f"Alpha body {i}. " * 10)
            for i in range(6)] + [DocPair("beta", f"beta.g{i}", f"Compute the beta value number {i}.",
                                          f"Beta body {i}. " * 10) for i in range(6)]


def _chat(message):
    return f"<|user|>\n{message}\n<|assistant|>\n"


def test_training_texts_are_exactly_what_the_job_sends_and_labels_follow_the_pairs():
    pairs = _pairs()
    texts = training_texts(pairs, TextRenderer(_chat), seed=3)
    assert len(texts) == 3 * len(pairs)
    ql_template, rc_template = load_prompt("query_likelihood"), load_prompt("relevance_classification")
    by_title = {p.title: p for p in pairs}
    for i, pair in enumerate(pairs):
        gen, ql, rc = texts[3 * i: 3 * i + 3]
        answer = json.loads(gen.answer)
        assert answer["query"] == pair.summary and answer["task"] in TASKS
        passage = Passage(id="x", title=pair.title, text=pair.body, source_id="x")
        sent = {_chat(render_generation_prompt(load_prompt("query_generation"), passage, QueryKnobs(
            query_length=query_length_knob(pair.summary), difficulty=d), 4000)) for d in ("easy", "medium", "hard")}
        assert gen.shared + gen.rest in sent
        knobs = QueryKnobs(query_length="short", difficulty="easy")
        query = QueryRecord(query_id="q", passage_id="p", task=answer["task"], query=pair.summary, knobs=knobs)
        seed = Candidate(passage_id="p", title=pair.title, text=pair.body, is_seed=True, retrieval_rank=1,
                         retrieval_score=None)
        assert ql.shared + ql.rest == ql_request(ql_template, query, seed, 4000)[0]
        assert ql.answer == " " + pair.summary
        other = by_title[re.search(r"Title: (\S+)\n", rc.rest).group(1)]
        assert rc.shared + rc.rest == rc_prompt(rc_template, query, Candidate(
            passage_id="o", title=other.title, text=other.body, is_seed=False, retrieval_rank=1,
            retrieval_score=None), 4000)
        label = {v["text"]: k for k, v in rc_template.labels.items()}[rc.answer]
        if label == "highly_relevant":
            assert other is pair
        elif label == "somewhat_relevant":
            assert other is not pair and other.package == pair.package
        else:
            assert other.package != pair.package
    labels = [t.answer for t in texts[2::3]]
    assert {" Highly Relevant", " Somewhat Relevant", " Not Relevant"} == set(labels)
    # One shared head for every QL and every RC text: the trainer encodes it once per batch.
    assert len({t.shared for t in texts[1::3]}) == 1 and len({t.shared for t in texts[2::3]}) == 1
    assert all(not t.shared[-1].isspace() for t in texts)


def test_the_texts_tokenize_in_parts_as_the_server_tokenizes_them_whole():
    from pipeline.llm.local_model import train_tokenizer
    from pipeline.teacher.train import encode

    pairs = _pairs()
    tokenizer = train_tokenizer([f"{p.title}\n{p.summary}\n{p.body}" for p in pairs]
                                + [load_prompt(n).body for n in ("query_generation", "query_likelihood",
                                                                "relevance_classification")], 600)

    def chat(message):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)

    texts = training_texts(pairs, TextRenderer(chat), seed=0)
    encoded, dropped = encode(texts, tokenizer, max_rest_tokens=10_000)
    assert dropped == 0 and len(encoded) == len(texts)
    for e, t in zip(encoded, texts):
        assert list(e.shared) + e.rest + e.answer[:len(tokenizer.encode(t.answer))] == \
            tokenizer.encode(t.shared + t.rest + t.answer)
    assert encoded[0].answer[-1] == tokenizer.eos_token_id  # generation ends; scoring answers do not
    assert encoded[1].answer[-1] != tokenizer.eos_token_id


def test_the_batched_loss_with_a_shared_head_equals_the_loss_of_whole_sequences():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.teacher.train import Encoded, batch_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=1, num_key_value_heads=1, head_dim=64))
    rng = random.Random(0)
    shared = tuple(rng.randrange(50) for _ in range(7))
    batch = [Encoded("query_likelihood", shared, [rng.randrange(50) for _ in range(n)],
                     [rng.randrange(50) for _ in range(m)]) for n, m in ((3, 2), (6, 4), (1, 1))]
    loss = batch_loss(model, batch, pad_id=0)
    expected = []
    for e in batch:
        seq = torch.tensor([list(e.shared) + e.rest + e.answer])
        logits = model(seq).logits[0]
        start = len(e.shared) + len(e.rest)
        expected.append(torch.nn.functional.cross_entropy(logits[start - 1:-1], seq[0, start:]))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
    loss.backward()  # gradients reach the shared head's computation too
    assert model.model.embed_tokens.weight.grad[list(shared)].abs().sum() > 0
