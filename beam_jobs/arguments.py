"""The argument parser every fret subcommand uses."""

from __future__ import annotations

import argparse


class FretArgumentParser(argparse.ArgumentParser):
    """Every subcommand's parser: each --long-flag is also --long_flag (and the other way round),
    as Beam's own flags are, and --help shows each flag's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        spellings = list(names)
        for name in names:
            if name.startswith("--"):
                for other in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if other not in spellings:
                        spellings.append(other)
        return super().add_argument(*spellings, **kwargs)
