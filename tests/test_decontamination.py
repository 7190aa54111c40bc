"""Decontamination with near misses on both sides: what must be dropped and what must stay."""

import numpy as np
import pytest

from pipeline.decontamination import DecontamConfig, EvalIndex, contamination, eval_keys, run_hashes

CONFIG = DecontamConfig()  # the defaults the job uses
EVAL_QUERY = "what temperature does water boil at"  # 6 words: a typical BEIR query
EVAL_PASSAGE = ("The kettle switches itself off once the water inside reaches a rolling boil, "
                "usually within three short minutes")  # 18 words: n = 9
LONG_EVAL_PASSAGE = " ".join(f"word{i}" for i in range(60))  # n = 13


@pytest.fixture(scope="module")
def index():
    return EvalIndex.build([EVAL_QUERY, EVAL_PASSAGE, LONG_EVAL_PASSAGE, "json"], CONFIG)


def query_hit(text, index):
    return contamination([text], index, CONFIG, whole_text=True)


def passage_hit(text, index):
    return contamination([text], index, CONFIG)


def test_a_generated_query_equal_after_normalisation_is_dropped(index):
    assert query_hit("What temperature does WATER boil at?", index)
    assert query_hit("JSON", index)  # shorter than min_words: only an equal query matches


def test_a_query_with_one_extra_word_is_dropped(index):
    """Under the 13-gram rule a 6-word query was one whole-text gram: one extra word escaped it."""
    hit = query_hit("exactly what temperature does water boil at", index)
    assert hit and "what temperature does water boil at" in hit


def test_a_paraphrase_is_kept(index):
    assert query_hit("at which temperature will water start boiling", index) is None
    assert query_hit("what temperature does milk boil at", index) is None
    assert query_hit("what is json used for", index) is None  # a 1-word eval text is not contained


def test_a_positive_that_quotes_an_eval_query_verbatim_is_dropped(index):
    passage = ("Cooking guides often ask what temperature does water boil at, and the answer depends on "
               "the altitude of the kitchen.")
    hit = passage_hit(passage, index)
    assert hit and "what temperature does water boil at" in hit
    assert passage_hit("Cooking guides explain that water boils at a lower temperature at altitude.", index) is None


def test_a_nine_word_overlap_with_a_short_eval_passage_is_dropped(index):
    """An 18-word eval passage is matched by 9-grams: nine shared words in a row are enough,
    eight are not. Under the 13-gram rule neither was caught."""
    nine = "once the water inside reaches a rolling boil usually"
    eight = "once the water inside reaches a rolling boil"
    assert passage_hit(f"My old kettle stopped {nine} at night.", index)
    assert passage_hit(f"My old kettle stopped {eight} at night.", index) is None


def test_a_long_eval_passage_needs_thirteen_words(index):
    words = LONG_EVAL_PASSAGE.split()
    assert passage_hit("prefix " + " ".join(words[5:18]) + " suffix", index)  # 13 words
    assert passage_hit("prefix " + " ".join(words[5:17]) + " suffix", index) is None  # 12 words


def test_the_n_rule_and_sizes():
    assert [CONFIG.passage_ngram(n) for n in (13, 16, 18, 20, 25, 26, 400)] == [8, 8, 9, 10, 12, 13, 13]
    assert list(CONFIG.sizes()) == list(range(4, 14))
    assert DecontamConfig(ngram=8).passage_ngram(100) == 8


def test_keys_are_64_bit_hashes_and_shared_runs_share_keys():
    keys = eval_keys(EVAL_PASSAGE, CONFIG)
    assert keys.dtype == np.uint64 and len(keys) == 1 + (18 - 9 + 1)  # whole text + its 9-grams
    # The same run of words gives the same key wherever it stands.
    a = run_hashes("x y a b c d".split(), [4])[4]
    b = run_hashes("a b c d z".split(), [4])[4]
    assert a[2] == b[0] and a[0] != b[0]


def test_an_empty_index_finds_nothing():
    assert contamination(["anything at all"], EvalIndex(), CONFIG, whole_text=True) is None
    assert len(EvalIndex.build(["", "   "], CONFIG)) == 0


def test_prefix_sum_hashes_equal_the_plain_polynomial():
    """The O(1)-per-run prefix-sum hashes against the polynomial written as a loop over Python ints."""
    from pipeline.decontamination import _finish, _word_hash

    tokens = "the kettle switches itself off once the water inside reaches a rolling boil".split()
    for n, got in run_hashes(tokens, range(1, 14)).items():
        plain = []
        for i in range(len(tokens) - n + 1):
            h = 0
            for t in tokens[i:i + n]:
                h = (h * 0x9E3779B97F4A7C15 + _word_hash(t)) % 2**64
            plain.append(h)
        assert (got == _finish(np.array(plain, dtype=np.uint64), n)).all(), n


def test_batched_keys_equal_per_text_keys():
    from pipeline.decontamination import eval_keys_batch

    texts = [EVAL_QUERY, EVAL_PASSAGE, LONG_EVAL_PASSAGE, "json", "", "a b c", "one two three four five"]
    batched = np.sort(eval_keys_batch(texts, CONFIG))
    single = np.sort(np.concatenate([eval_keys(t, CONFIG) for t in texts]))
    assert (batched == single).all() and len(batched) == 2 + 11 + 49 + 1 + 1 + 2
