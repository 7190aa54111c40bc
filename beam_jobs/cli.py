"""The `fret` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fret", description="Gecko-style embedding data distillation")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    args, rest = parser.parse_known_args(argv)
    if args.command == "version":
        from importlib.metadata import version

        print(version("fret-distill"))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
