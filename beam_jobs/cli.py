"""The `fret` command: `fret run` (the FRet Beam job), `fret demo`, `fret version`."""

from __future__ import annotations

import argparse
import sys


def _run(argv: list[str]) -> int:
    from beam_jobs import fret_job
    from beam_jobs.options import FretOptions

    # Parse our flags here for --help and early errors; the rest (--runner, --project, ...) go to Beam.
    parser = argparse.ArgumentParser(
        prog="fret run",
        description="Run the FRet job: seed passages -> relabelled training examples as Parquet shards. "
                    "Any standard Beam flag (--runner, --project, --region, --temp_location, ...) is passed on.")
    FretOptions._add_argparse_args(parser)
    known, _ = parser.parse_known_args(argv)
    if not known.input or not known.output:
        parser.error("--input and --output are required")
    result = fret_job.run(argv)
    print(f"[fret] job state: {result.state}")
    return 0


def _demo(argv: list[str]) -> int:
    from beam_jobs import demo

    return demo.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"run": _run, "demo": _demo}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: fret {run,demo,version} [flags]\n\n"
              "  run      run the FRet job (fret run --help lists its flags)\n"
              "  demo     start vLLM on a tiny local model and run the job on the bundled sample passages\n"
              "  version  print the version")
        return 0 if argv else 2
    if argv[0] == "version":
        from importlib.metadata import version

        print(version("fret-distill"))
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
