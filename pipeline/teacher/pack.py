"""Pack the teacher's corpus so a larger teacher can be trained on another machine (a lent GPU).

A pack holds what training needs from this machine and nothing else: the docstring pairs (read
from this virtualenv's packages; the other machine has other packages), the BPE tokenizer with
the chat template, and two rerank probes with all-MiniLM-L6-v2's top candidates per query:
- `validation`: held-out third-party pairs the teacher never trains on; checkpoints are chosen on it;
- `pydoc`: samples/pydoc-retrieval's test split, reported only (bench/teacher.py's gate 1 is
  measured on it, so nothing is chosen on it).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import random
import sys
from pathlib import Path

from pipeline.teacher.corpus import DocPair, docstring_pairs, samples_held_out, site_packages_dirs

ROOT = Path(__file__).resolve().parents[2]
PAIRS_FILE = "pairs.jsonl.gz"
PROBES_FILE = "probes.json"
TOKENIZER_DIR = "tokenizer"


def read_pairs(pack_dir: str | Path) -> tuple[list[DocPair], list[DocPair]]:
    """(training pairs, held-out validation pairs) of a pack."""
    train, validation = [], []
    with gzip.open(Path(pack_dir) / PAIRS_FILE, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            (validation if row.pop("split") == "validation" else train).append(DocPair(**row))
    return train, validation


def read_probes(pack_dir: str | Path) -> dict:
    return json.loads((Path(pack_dir) / PROBES_FILE).read_text())


def _top_candidates(queries: list[str], doc_ids: list[str], doc_texts: list[str], k: int) -> list[list[str]]:
    from pipeline.embedding import Embedder
    from pipeline.train.evaluate import search

    embedder = Embedder()
    return search(embedder.encode, embedder.encode, queries, doc_ids, doc_texts, k=k)[None]


def _validation_probe(validation: list[DocPair], queries: int, k: int) -> dict:
    from pipeline.embedding import passage_text

    ids = [f"v{i}" for i in range(len(validation))]
    texts = [passage_text(p.title, p.body) for p in validation]
    asked = list(range(queries))
    ranked = _top_candidates([validation[i].summary for i in asked], ids, texts, k)
    return {"queries": {ids[i]: validation[i].summary for i in asked},
            "qrels": {ids[i]: {ids[i]: 1} for i in asked},
            "docs": {ids[i]: [p.title, p.body] for i, p in enumerate(validation)},
            "candidates": dict(zip((ids[i] for i in asked), ranked))}


def _pydoc_probe(k: int) -> dict:
    from pipeline.embedding import passage_text
    from pipeline.train.evaluate import load_beir

    corpus, queries, qrels = load_beir(ROOT / "samples" / "pydoc-retrieval", "test")
    qids, doc_ids = sorted(queries), sorted(corpus)
    ranked = _top_candidates([queries[q] for q in qids], doc_ids, [passage_text(*corpus[d]) for d in doc_ids], k)
    return {"queries": {q: queries[q] for q in qids}, "qrels": {q: dict(qrels[q]) for q in qids},
            "docs": {d: list(corpus[d]) for d in doc_ids}, "candidates": dict(zip(qids, ranked))}


def pack(out_dir: str | Path, seed: int = 0, vocab_size: int = 8192, validation_pairs: int = 2000,
         probe_queries: int = 300, candidates: int = 20, log=print) -> Path:
    from pipeline.llm.local_model import train_tokenizer
    from pipeline.teacher.train import _prompts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = docstring_pairs(site_packages_dirs(), samples_held_out(ROOT), per_package=10**9)
    random.Random(seed).shuffle(pairs)
    validation, train = pairs[:validation_pairs], pairs[validation_pairs:]
    log(f"[pack] {len(train)} training pairs, {len(validation)} held out, "
        f"{len({p.package for p in pairs})} packages")
    with gzip.open(out / PAIRS_FILE, "wt", encoding="utf-8") as f:
        for split, rows in (("train", train), ("validation", validation)):
            for p in rows:
                f.write(json.dumps({"split": split, **dataclasses.asdict(p)}, ensure_ascii=False) + "\n")
    tokenizer = train_tokenizer([f"{p.title}\n{p.summary}\n{p.body}" for p in train]
                                + [t.body for t in _prompts()] * 20, vocab_size)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    probes = {"candidates": candidates, "validation": _validation_probe(validation, probe_queries, candidates),
              "pydoc": _pydoc_probe(candidates)}
    (out / PROBES_FILE).write_text(json.dumps(probes, ensure_ascii=False))
    log(f"[pack] wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    pack(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
