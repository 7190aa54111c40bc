"""Given queries (--queries) in waves: the join with the corpus on keys, then each query meets
its seed passage in the seed's wave.

- plan: the corpus reaches the join as keys (gq.CorpusRef: id, source, chunk, the keys a
  positive is looked up by; no text), after the duplicate passages are decided. The given rows
  are read and joined to those keys exactly as the one pipeline joins them to the passages
  (beam_jobs.given.JoinGivenToCorpus); a given text the corpus lacks joins the wave of its row.
  A query with a positive goes to its seed's wave as (QueryRecord, CorpusRef); one without
  goes to its row's wave, ready to search.
- prepare, per wave: the wave's seeded queries get their seed passage from the wave's pool.

The plan holds the given rows (their texts) once, and the corpus as keys only. Every query's
outcomes stay in one wave: its seed's (or its row's), where it is searched, reranked and
written; a row dead-lettered or filtered before that has no other outcome.
"""

from __future__ import annotations

import apache_beam as beam

from beam_jobs.given import given_stage
from beam_jobs.scratch import ReadWaveChunks, wave_files, write_chunks
from pipeline import given_queries as gq
from pipeline import waves as w
from pipeline.passage_dedupe import passage_key


def dedupe_member(passage, given: bool):
    """What the plan's duplicate-passage rule groups: the passage's key, and beside given queries
    the keys its positive is looked up by."""
    return passage_key(passage), (tuple(gq.corpus_keys(passage)) if given else ())


def member_key(member):
    return member[0]


def member_keys(member):
    """The keys a positive looks the member up by (empty without given queries)."""
    return member[1]


def plan_given(p, opts, folder: str, waves: int, kept_members, aliases) -> dict:
    """Read --queries and join them to the kept corpus keys (`aliases`: (id, kept id) of each
    dropped duplicate text); writes the joined texts ("joined"),
    the seeded queries ("seeded"), the queries without a positive ("queries", "query_keys") and
    the rows' dead letters ("outcomes"). -> {"units": [...], "counts": [...]} for the plan."""
    refs = kept_members | "CorpusRefs" >> beam.Map(
        lambda m: gq.CorpusRef(m[0].id, m[0].source_id, m[0].chunk, m[1]))
    stage = given_stage(p, opts, refs, aliases, keys_of=gq.ref_keys, to_pool=gq.corpus_ref)
    attached = stage["attached"]
    write_chunks(attached["joined"] | "JoinedWave" >> beam.Map(lambda ps: (w.wave_of(ps.source_id, waves), ps)),
           "WriteJoined", folder, "joined", waves)
    queries = attached["queries"]
    seeded = queries | "Seeded" >> beam.Filter(lambda qs: qs[1] is not None)
    write_chunks(seeded | "SeededWave" >> beam.Map(lambda qs: (w.query_wave(qs, waves), qs)),
           "WriteSeeded", folder, "seeded", waves)
    unseeded = queries | "Unseeded" >> beam.Filter(lambda qs: qs[1] is None)
    write_chunks(unseeded | "UnseededWave" >> beam.Map(lambda qs: (w.query_wave(qs, waves), qs)),
           "WriteUnseeded", folder, "queries", waves)
    write_chunks(unseeded | "UnseededKeys" >> beam.Map(lambda qs: (w.query_wave(qs, waves), w.query_key(qs))),
           "WriteUnseededKeys", folder, "query_keys", waves)
    # a row dead-lettered here has no other outcome: any fixed wave resolves it
    outcomes = stage["outcomes"] | "GivenOutcomes" >> beam.Flatten()
    write_chunks(outcomes | "GivenOutcomeWave" >> beam.Map(lambda o: (w.wave_of(o.unit_id, waves), o)),
           "WriteGivenOutcomes", folder, "outcomes", waves)
    return {"units": stage["units"], "counts": stage["counts"]}


def _seed_key(ref) -> tuple:
    return ref.id, ref.source_id, ref.chunk


def _with_seed(element):
    _, grouped = element
    queries = list(grouped["query"])
    if not queries:
        return
    passages = sorted(grouped["passage"], key=lambda ps: (ps.chunk, ps.id))
    if not passages:  # the plan joined it to a kept corpus key or a joined text of this wave
        raise RuntimeError(f"a bug in fret-distill: the seed passage of {len(queries)} given queries "
                           f"({queries[0].query_id}) is not in its wave")
    for query in queries:
        yield query, passages[0]


def seeded_queries(p, pool, folder: str, wave: int):
    """The wave's given queries with a positive -> (QueryRecord, seed Passage from `pool`)."""
    seeded = p | "ReadSeeded" >> ReadWaveChunks(wave_files(folder, "seeded", wave))
    return ({"passage": pool | "PoolBySeedKey" >> beam.Map(lambda ps: (_seed_key(ps), ps)),
             "query": seeded | "QueryBySeedKey" >> beam.Map(lambda qs: (_seed_key(qs[1]), qs[0]))}
            | "MeetSeeds" >> beam.CoGroupByKey()
            | "WithSeed" >> beam.FlatMap(_with_seed))
