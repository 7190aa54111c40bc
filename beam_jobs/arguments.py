"""The argument parser every fret subcommand uses."""

from __future__ import annotations

import argparse


class FretHelpFormatter(argparse.HelpFormatter):
    """Every subcommand's --help: a flag's default once (none where its help gives its own, or where
    there is none to give: no "(default: )" or "(default: None)"), "(required)" for a required
    flag, and the dash forms in the usage line, as README writes them."""

    REQUIRED: tuple[str, ...] = ()  # dests the command requires although argparse does not

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or action.dest in self.REQUIRED:
            return f"{text} (required)"
        says_own = "(default" in text.lower() or "default:" in text.lower()
        nothing_to_say = (action.default in (None, "", argparse.SUPPRESS) or not action.option_strings
                          or action.nargs == 0 and action.default is False)
        if says_own or nothing_to_say:
            return text
        return f"{text} (default: %(default)s)"

    def _format_usage(self, usage, actions, groups, prefix):
        return super()._format_usage(usage, [_dashed(a) for a in actions], groups, prefix)


def _dashed(action: argparse.Action) -> argparse.Action:
    """The action as the usage line shows it: its dash form first."""
    import copy

    dashes = [o for o in action.option_strings if "_" not in o]
    if not dashes or dashes == action.option_strings[:1]:
        return action
    shown = copy.copy(action)
    shown.option_strings = dashes + [o for o in action.option_strings if o not in dashes]
    return shown


class FretArgumentParser(argparse.ArgumentParser):
    """Every subcommand's parser: each --long-flag is also --long_flag (and the other way round),
    as Beam's own flags are, and --help shows each flag's default (FretHelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", FretHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *names, **kwargs):
        spellings = list(names)
        for name in names:
            if name.startswith("--"):
                for other in ("--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")):
                    if other not in spellings:
                        spellings.append(other)
        return super().add_argument(*spellings, **kwargs)


def add_switch(group, name: str, default: bool, help: str) -> None:
    """One style for every on/off flag: `--flag` alone turns it on, `--flag true|false` sets it."""
    add_flag(group, name, type=parse_bool, nargs="?", const=True, default=default, metavar="true|false", help=help)


def add_flag(group, name: str, **kwargs) -> None:
    """Add --name_with_underscores (Beam's style) and its --name-with-dashes alias."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    group.add_argument(*flags, dest=name, **kwargs)


def parse_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")
