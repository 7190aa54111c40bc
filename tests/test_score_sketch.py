"""The manifest's score summaries against numpy, over random partitions merged in several orders."""

import random

import numpy as np
from hypothesis import given, settings, strategies as st

from pipeline.accounting import ExampleStats, ManifestAccumulator, summarize
from pipeline.score_sketch import ScoreSketch


def sketch_of(values, capacity):
    s = ScoreSketch(capacity=capacity)
    for v in values:
        s.add(float(v))
    return s


def merged(parts, capacity, order):
    sketches = [sketch_of(p, capacity) for p in parts]
    if order == "left":
        out = sketches[0]
        for s in sketches[1:]:
            out.merge(s)
        return out
    if order == "right":
        out = sketches[-1]
        for s in reversed(sketches[:-1]):
            out.merge(s)
        return out
    while len(sketches) > 1:  # pairwise tree, as a combiner lifting partial sums
        sketches = [sketches[i].merge(sketches[i + 1]) if i + 1 < len(sketches) else sketches[i]
                    for i in range(0, len(sketches), 2)]
    return sketches[0]


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=400),
       cuts=st.lists(st.integers(0, 400), max_size=6), order=st.sampled_from(["left", "right", "tree"]),
       capacity=st.sampled_from([16, 1000]))
def test_count_mean_sd_min_max_are_exact_in_any_merge_order(values, cuts, order, capacity):
    bounds = sorted({0, len(values), *[c % (len(values) + 1) for c in cuts]})
    parts = [values[a:b] for a, b in zip(bounds, bounds[1:])]
    s = merged(parts, capacity, order)
    ref = np.asarray(values, dtype=np.float64)
    assert s.count == len(values)
    assert abs(s.mean - ref.mean()) <= 1e-9 * (1 + abs(ref).max())
    assert abs(s.std - ref.std()) <= 1e-7 * (1 + abs(ref).max())
    assert (s.min, s.max) == (ref.min(), ref.max())
    assert len(s.sample) == min(capacity, len(values))
    if len(values) <= capacity:  # the sample is the population: the median is numpy's lower median
        assert s.quantile(0.5) == np.sort(ref)[len(ref) // 2]


def test_parts_weigh_what_they_saw_not_what_they_kept():
    """The review's case: three parts of 30k examples scoring 0, 1 and 2."""
    for order in ("left", "right", "tree"):
        s = merged([[0.0] * 30_000, [1.0] * 30_000, [2.0] * 30_000], 10_000, order)
        assert s.mean == 1.0 and abs(s.std - np.std([0, 1, 2])) < 1e-12
        assert s.quantile(0.5) == 1.0
        shares = np.bincount(np.asarray(s.sample, dtype=int), minlength=3) / len(s.sample)
        assert np.all(np.abs(shares - 1 / 3) < 0.03), shares


def test_sampled_quantiles_track_numpy_over_uneven_parts():
    rng = np.random.default_rng(7)
    parts = [rng.normal(loc, 1.0, size) for loc, size in ((0.0, 40_000), (3.0, 5_000), (-2.0, 15_000))]
    ref = np.concatenate(parts)
    for order in ("left", "right", "tree"):
        s = merged(parts, 10_000, order)
        for q in (0.1, 0.5, 0.9):
            # The sampled quantile's rank in the whole population is within 3% of q.
            rank = float(np.mean(ref <= s.quantile(q)))
            assert abs(rank - q) < 0.03, (order, q, rank)


def test_the_manifest_accumulator_summarises_merged_examples_exactly():
    rng = random.Random(3)
    stats = [ExampleStats("t", False, rng.uniform(-9, 0), rng.uniform(0, 2), rng.uniform(0, 2), rng.randint(1, 9))
             for _ in range(25_000)]
    parts = [stats[:20_000], stats[20_000:23_000], stats[23_000:]]
    accs = []
    for part in parts:
        acc = ManifestAccumulator()
        for e in part:
            acc.add_example(e)
        accs.append(acc)
    total = accs[2].merge(accs[0]).merge(accs[1])
    ql = np.array([e.ql for e in stats])
    summary = summarize(total.scores["ql"])
    assert summary.count == 25_000 and abs(summary.mean - ql.mean()) < 1e-9 and abs(summary.std - ql.std()) < 1e-9
    assert abs(float(np.mean(ql <= summary.p50)) - 0.5) < 0.03


def test_quantiles_are_as_close_as_apache_datasketches_kll_over_merged_parts():
    """Issue 36: ours against DataSketches' KLL (k=200, the library's default) on the same random
    values, split into uneven parts and merged in a random order: the rank error of each quantile
    is within KLL's stated bound, and exact up to CAPACITY values."""
    from datasketches import kll_doubles_sketch

    from pipeline.score_sketch import CAPACITY

    bound = kll_doubles_sketch.get_normalized_rank_error(200, False)  # 99% confidence, one quantile
    rng = np.random.default_rng(0)
    for n, draw in ((3_000, rng.normal), (60_000, rng.exponential), (60_000, lambda size: rng.integers(0, 3, size))):
        values = np.asarray(draw(size=n), dtype=float)
        cuts = sorted(rng.choice(np.arange(1, n), size=6, replace=False))
        parts = np.split(values, cuts)
        ours, kll = ScoreSketch(), kll_doubles_sketch(200)
        order = list(range(len(parts)))
        random.Random(n).shuffle(order)
        for i in order:
            ours.merge(sketch_of(parts[i], CAPACITY))
            part = kll_doubles_sketch(200)
            part.update(parts[i])
            kll.merge(part)
        ordered = np.sort(values)

        def rank_error(estimate: float, q: float) -> float:
            # the estimate's rank range among the values (ties span a range), against q
            lo, hi = np.searchsorted(ordered, estimate, "left") / n, np.searchsorted(ordered, estimate, "right") / n
            return 0.0 if lo <= q <= hi else min(abs(lo - q), abs(hi - q))

        for q in (0.05, 0.25, 0.5, 0.75, 0.95):  # the manifest reports p50; the rest check the sample's spread
            mine, theirs = rank_error(ours.quantile(q), q), rank_error(kll.get_quantile(q), q)
            assert mine <= bound, (n, q, mine, theirs, bound)
            if n <= CAPACITY:
                assert mine <= 1 / n, (n, q, mine)  # the whole population is kept
