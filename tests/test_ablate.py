"""`fret ablate`: the eight training sets it derives, and the command end to end on a real job output."""

import json
import struct
from pathlib import Path

import pytest

from beam_jobs import cli
from pipeline.testing.stub_llm import StubLLM
from pipeline.testing.tiny_encoder import build_tiny_encoder
from pipeline.train.ablation import VARIANTS, Variant, variant_rows
from tests.jobkit import run_job, small_beir, write_jsonl
from tests.test_reliability import PASSAGES, distinct_queries

BEIR = Path("samples/pydoc-retrieval")


def candidate(pid, fused_rank, retrieval_rank, is_seed=False):
    return {"passage_id": pid, "title": pid.upper(), "text": f"text of {pid}", "is_seed": is_seed,
            "retrieval_rank": retrieval_rank, "ql": -1.0, "ql_mean": -0.1, "rc": 0.5, "ql_rank": fused_rank,
            "rc_rank": fused_rank, "fused": 1 / (60 + fused_rank), "fused_rank": fused_rank}


ROW = {"example_id": "e1", "query_id": "q1", "task": "find it", "query": "what is x", "positive_changed": True,
       "candidates": [candidate("seed", 3, 2, is_seed=True), candidate("best", 1, 1), candidate("c3", 2, 3),
                      candidate("c4", 4, 4), candidate("c5", 5, 5), candidate("c6", 6, 6)]}


def test_each_variant_takes_its_positive_and_negative():
    def one(positive, negatives):
        [row] = variant_rows([ROW], Variant(positive, negatives), window=(4, 5))
        return row["positive"]["id"], [n["id"] for n in row["hard_negatives"]]

    assert one("seed", "none") == ("seed", [])
    assert one("llm", "none") == ("best", [])
    assert one("seed", "lowest") == ("seed", ["c6"])
    assert one("llm", "lowest") == ("best", ["c6"])  # the seed is never a negative
    assert one("llm", "rank_window") == ("best", ["c4"])
    pos, [neg] = one("llm", "random")
    assert pos == "best" and neg in {"c3", "c4", "c5", "c6"}
    assert one("llm", "random") == (pos, [neg])  # seeded: the same draw every time
    [row] = variant_rows([ROW], Variant("llm", "lowest"))
    assert row["task"] == "find it" and row["positive"] == {"id": "best", "title": "BEST", "text": "text of best"}


def test_a_run_without_candidates_is_a_clear_error():
    with pytest.raises(ValueError, match="--keep-candidates"):
        list(variant_rows([{**ROW, "candidates": None}], Variant("seed", "none")))


def test_ablate_end_to_end_on_a_job_output(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", PASSAGES[:12])
    with StubLLM(generate_fn=distinct_queries) as stub:
        out = run_job(inp, tmp_path / "run", stub.base_url, "--num_negatives", "1")
    assert out["manifest"]["written"] == 12
    beir = small_beir(BEIR, tmp_path / "beir", n_queries=10)
    encoder = build_tiny_encoder(tmp_path / "enc")
    assert cli.main(["ablate", str(tmp_path / "run"), "--beir", str(beir), "--output", str(tmp_path / "abl"),
                     "--seeds", "0,1", "--base-model", str(encoder), "--batch-size", "4", "--max-steps", "2",
                     "--window", "2,4"]) == 0
    result = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert set(result["variants"]) == {v.name for v in VARIANTS}
    for stats in result["variants"].values():
        assert [r["seed"] for r in stats["runs"]] == [0, 1]
        values = [r["ndcg@10"] for r in stats["runs"]]
        assert min(values) <= stats["ndcg@10"]["mean"] <= max(values) and 0 <= min(values) <= 1
    assert result["examples"] == 12 and result["llm_model"] == "stub-llm"
    # Same budget for every variant: each trained exactly the steps asked.
    for v in VARIANTS:
        summary = json.loads((tmp_path / "abl" / "runs" / v.name / "seed-0" / "train_summary.json").read_text())
        assert summary["steps"] == 2
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "scripted test stub" in table and "noise" in table  # the LLM had no real weights, and it says so
    assert table.count(" ± ") == 1 + 8 and f"zero-shot (base model, no training): {result['zero_shot']:.4f}" in table  # the header's "mean ± sd", then one cell a variant
    png = (tmp_path / "abl" / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 100
