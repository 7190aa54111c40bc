"""Load versioned prompt templates from the prompts package and render them."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from importlib import resources
from typing import Any

import yaml

_TAG = re.compile(r"</([a-z_]+)>")  # a closing tag in a template marks a data delimiter
_FILE = re.compile(r"^(?P<name>[a-z_]+)_v(?P<version>\d+)\.txt$")


class PromptError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    kind: str  # "chat" (one user message) or "completion" (raw prompt text)
    body: str
    variables: tuple[str, ...]
    sha256: str  # hash of the whole file, front matter included
    meta: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def hash(self) -> str:
        """Short stable content hash recorded in every output row."""
        return self.sha256[:16]

    @property
    def labels(self) -> dict[str, dict[str, Any]]:
        return self.meta.get("labels", {})

    def render(self, **values: Any) -> str:
        missing = set(self.variables) - set(values)
        unknown = set(values) - set(self.variables)
        if missing or unknown:
            raise PromptError(
                f"prompt {self.id} takes variables {list(self.variables)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.variables)) + r")\}")
        # One pass, so a value that contains "{title}" is never expanded again.
        return pattern.sub(lambda m: self._defuse(str(values[m.group(1)])), self.body)

    @property
    def delimiters(self) -> tuple[str, ...]:
        """Tag names the template wraps data in, e.g. "passage" for <passage> ... </passage>."""
        return tuple(sorted(set(_TAG.findall(self.body))))

    def _defuse(self, value: str) -> str:
        """A value cannot open or close the template's own delimiters: <passage> becomes [passage]."""
        for tag in self.delimiters:
            value = re.sub(rf"<\s*(/?)\s*{re.escape(tag)}\s*>", rf"[\1{tag}]", value, flags=re.IGNORECASE)
        return value


def _parse(filename: str, raw: bytes) -> PromptTemplate:
    text = raw.decode("utf-8")
    if not text.startswith("---\n"):
        raise PromptError(f"{filename}: a prompt file starts with a '---' front matter block")
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front) or {}
    match = _FILE.match(filename)
    if not match or meta.get("name") != match["name"] or int(meta.get("version", -1)) != int(match["version"]):
        raise PromptError(f"{filename}: file name must be <name>_v<version>.txt and agree with its front matter")
    if meta.get("kind") not in ("chat", "completion"):
        raise PromptError(f"{filename}: kind must be 'chat' or 'completion'")
    return PromptTemplate(
        name=meta["name"],
        version=int(meta["version"]),
        kind=meta["kind"],
        body=body.rstrip("\n") if meta["kind"] == "chat" else body.rstrip(" \n"),
        variables=tuple(meta.get("variables", ())),
        sha256=hashlib.sha256(raw).hexdigest(),
        meta=meta,
    )


@functools.lru_cache(maxsize=None)
def available() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for entry in resources.files("prompts").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.setdefault(match["name"], []).append(int(match["version"]))
    return {k: sorted(v) for k, v in found.items()}


@functools.lru_cache(maxsize=None)
def load_prompt(name: str, version: int | None = None) -> PromptTemplate:
    """Load prompts/<name>_v<version>.txt; the newest version when none is given."""
    versions = available().get(name)
    if not versions:
        raise PromptError(f"no prompt named {name!r}; available: {sorted(available())}")
    version = versions[-1] if version is None else version
    if version not in versions:
        raise PromptError(f"prompt {name!r} has versions {versions}, not {version}")
    filename = f"{name}_v{version}.txt"
    return _parse(filename, resources.files("prompts").joinpath(filename).read_bytes())
