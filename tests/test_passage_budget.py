"""Every passage fits what the embedder reads: title, text and special tokens, counted together."""

from apache_beam.utils.shared import Shared

from beam_jobs.common import OUTCOME
from beam_jobs.read import _ParseAndSplit
from pipeline.embedding import passage_text
from pipeline.ingest import SplitConfig

TITLE = "The json module: encoders, decoders and hooks"  # 11 MiniLM tokens
WORDS = ("Serialisation turns Python objects into JSON text, and the decoder turns the text back into "
         "dictionaries, lists, strings and numbers. ").split()


def split(record: dict, max_tokens: int):
    fn = _ParseAndSplit("all-MiniLM-L6-v2", SplitConfig(max_tokens=max_tokens), Shared())
    fn.setup()
    out = list(fn.process(("in.jsonl:1", record)))
    return fn, [o for o in out if not hasattr(o, "tag")], [o.value for o in out if getattr(o, "tag", None) == OUTCOME]


def embedded_tokens(tokenizer, passage) -> int:
    return len(tokenizer(passage_text(passage.title, passage.text), add_special_tokens=True)["input_ids"])


def test_long_titled_chunks_fit_the_embedder_whole():
    """A 255-token chunk with an 11-token title was 268 tokens: MiniLM never read its last 12."""
    text = " ".join(WORDS[i % len(WORDS)] + ("." if i % 17 == 16 else "") for i in range(1500))
    fn, passages, outcomes = split({"id": "doc", "title": TITLE, "text": text}, max_tokens=256)
    assert not outcomes and len(passages) > 3
    sizes = [embedded_tokens(fn._tokenizer, p) for p in passages]
    assert max(sizes) <= 256, sizes
    assert sorted(sizes)[-2] > 200, sizes  # the budget is used, not halved
    # a flag above what the embedder reads is capped at its max_seq_length (256 for MiniLM)
    fn, passages, _ = split({"id": "doc", "title": TITLE, "text": text}, max_tokens=1000)
    assert max(embedded_tokens(fn._tokenizer, p) for p in passages) <= 256
    assert fn._split_here.max_tokens == 256 and fn._split_here.special_tokens == 2


def test_a_title_that_fills_the_budget_is_dead_lettered_with_a_reason():
    title = " ".join(["title"] * 200)
    _, passages, outcomes = split({"id": "t", "title": title, "text": " ".join(WORDS * 30)}, max_tokens=256)
    assert not passages and len(outcomes) == 1
    letter = outcomes[0].record
    assert letter.reason == "title_too_long" and "--max-passage-tokens" in letter.detail

