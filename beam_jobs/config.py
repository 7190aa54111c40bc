"""`fret run --config job.yaml`: the job's flags as a validated YAML file.

The pydantic model is derived from the flag definitions in beam_jobs/options.py, so the file
and the flags can never drift apart. Keys are the flag names (underscores or dashes); a `beam:`
mapping holds standard Beam options (runner, project, region, ...), passed on unvalidated, for
Beam to check. Flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, create_model


class ConfigError(ValueError):
    pass


def _flag_actions() -> list[argparse.Action]:
    from beam_jobs.options import FretOptions

    parser = argparse.ArgumentParser(add_help=False)
    FretOptions._add_argparse_args(parser)
    return [a for a in parser._actions if a.dest != "help"]


@functools.lru_cache(maxsize=None)
def config_model() -> type[BaseModel]:
    from beam_jobs.arguments import parse_bool
    from beam_jobs.options import parse_wave_size

    fields: dict[str, Any] = {}
    for action in _flag_actions():
        if isinstance(action, argparse._StoreTrueAction) or action.type is parse_bool:
            kind: Any = bool
        elif action.type is parse_wave_size:
            kind = Annotated[Union[int, str], PlainValidator(parse_wave_size)]
        elif action.choices:
            kind = Literal[tuple(action.choices)]
        else:
            kind = action.type or str
        fields[action.dest] = (Optional[kind], Field(None, description=action.help or ""))
    fields["beam"] = (dict[str, Any], Field(default_factory=dict, description="standard Beam pipeline options"))
    return create_model("JobConfig", __config__=ConfigDict(extra="forbid"), **fields)


def load_config(path: str) -> BaseModel:
    """Parse and validate a YAML job file; errors name the file and every bad key."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of flag names to values")
    data = {str(k).replace("-", "_"): v for k, v in raw.items()}
    try:
        return config_model().model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise ConfigError(f"config file {path} is invalid: {problems}") from None


def _problem(error: dict) -> str:
    """One validation error; an unknown key gets the closest flag name (a typo, most often)."""
    import difflib

    where = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
        close = difflib.get_close_matches(where, list(config_model().model_fields), n=1, cutoff=0.6)
        return f"{where}: not a fret flag" + (f"; did you mean {close[0]}?" if close else
                                               " (Beam's own options go under `beam:`)")
    return f"{where}: {error['msg']}"


def config_to_argv(config: BaseModel) -> list[str]:
    """The file as flags, to be placed before the command line's own (argparse: last one wins)."""
    argv: list[str] = []
    store_true = {a.dest for a in _flag_actions() if isinstance(a, argparse._StoreTrueAction)}
    for name, value in config.model_dump(exclude_none=True).items():
        if name == "beam":
            for key, beam_value in value.items():
                flag = f"--{str(key).replace('-', '_')}"
                if beam_value is True:
                    argv.append(flag)
                elif beam_value not in (False, None):
                    argv += [flag, _flag_value(beam_value)]
        elif name in store_true:
            if value:
                argv.append(f"--{name}")
        else:
            argv += [f"--{name}", _flag_value(value)]
    return argv


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def expand_config(argv: list[str]) -> list[str]:
    """Replace `--config FILE` in argv by the file's flags, the command line's flags after them."""
    argv = list(argv)
    for flag in ("--config", "--config_file", "--config-file"):
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                path = argv[i + 1]
                rest = argv[:i] + argv[i + 2:]
                return config_to_argv(load_config(path)) + rest
            if arg.startswith(flag + "="):
                return config_to_argv(load_config(arg.split("=", 1)[1])) + argv[:i] + argv[i + 1:]
    return argv
