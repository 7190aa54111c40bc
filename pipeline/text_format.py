"""How queries and documents become the text an embedding model reads.

- gecko: Gecko's templates, `task: {task} | query: {query}` and `title: {title} | text: {text}`.
- plain: the query alone, and the title on its own line above the text (what retrieval embeds).

A trained model records its format twice: sentence-transformers' own `prompts` (so
`SentenceTransformer(path).encode(q, prompt_name="query")` gives the query text that
`fret eval` measures) and FORMAT_FILE, the whole template, which `fret eval` reads back.
A prompt can only be prepended, so it cannot place a title: the `document` prompt is the one
for an untitled document, and documents with titles need the template (FORMAT_FILE).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

FORMAT_FILE = "fret_text_format.json"
DEFAULT_TASK = "Given a query, find a relevant passage"


@dataclasses.dataclass(frozen=True)
class TextFormat:
    name: str
    query_template: str  # fields {task} and {query}
    document_template: str  # fields {title} and {text}; an untitled document drops the title line

    def query(self, task: str, query: str) -> str:
        return self.query_template.format(task=task, query=query)

    def document(self, title: str, text: str) -> str:
        if not title and "{title}\n" in self.document_template:
            return self.document_template.replace("{title}\n", "").format(text=text)
        return self.document_template.format(title=title or "none", text=text)

    def prompts(self, task: str) -> dict[str, str]:
        """sentence-transformers prompts: what is prepended to a bare query and an untitled text."""
        return {"query": _prefix(self.query_template, "{query}").format(task=task, query=""),
                "document": _prefix(self.document(title="", text="{text}"), "{text}")}

    def to_json(self, task: str) -> dict:
        return {"name": self.name, "query_template": self.query_template,
                "document_template": self.document_template, "task": task}


GECKO = TextFormat("gecko", "task: {task} | query: {query}", "title: {title} | text: {text}")
PLAIN = TextFormat("plain", "{query}", "{title}\n{text}")
FORMATS = {f.name: f for f in (GECKO, PLAIN)}


def passage_text(title: str, text: str) -> str:
    """What retrieval embeds: the plain text format (title above text), kept in one place."""
    return PLAIN.document(title, text)
CHOICES = ("auto", *FORMATS)  # auto: the model's own recorded format, plain when it has none


def _prefix(template: str, field: str) -> str:
    head, sep, tail = template.partition(field)
    if not sep or tail:
        raise ValueError(f"a prompt needs {field} at the end of the template, got {template!r}")
    return head


@dataclasses.dataclass(frozen=True)
class ResolvedFormat:
    """The format to use, the task written into queries, and where the choice came from."""

    format: TextFormat
    task: str
    source: str  # "flag", "model" (FORMAT_FILE), "model prompts", or "default"

    def describe(self) -> str:
        task = f", task {self.task!r}" if "{task}" in self.format.query_template else ""
        return f"text format {self.format.name} ({self.source}{task})"


def recorded_format(model_path: Optional[str | Path]) -> Optional[tuple[TextFormat, str, str]]:
    """(format, task, source) a saved model carries, or None: FORMAT_FILE first, then its
    sentence-transformers prompts (prefixes become templates)."""
    from pipeline.model_paths import resolve_model_path

    if model_path is None:
        return None
    try:
        folder = Path(resolve_model_path(str(model_path)))
    except ValueError:
        return None
    if not folder.is_dir():
        return None
    saved = folder / FORMAT_FILE
    if saved.exists():
        data = json.loads(saved.read_text())
        fmt = TextFormat(data["name"], data["query_template"], data["document_template"])
        return fmt, data.get("task") or DEFAULT_TASK, "model"
    config = folder / "config_sentence_transformers.json"
    if config.exists():
        prompts = json.loads(config.read_text()).get("prompts") or {}
        query, document = prompts.get("query", ""), prompts.get("document", prompts.get("passage", ""))
        if query or document:
            fmt = TextFormat("model prompts", query.replace("{", "{{").replace("}", "}}") + "{query}",
                             document.replace("{", "{{").replace("}", "}}") + "{title}\n{text}")
            return fmt, DEFAULT_TASK, "model prompts"
    return None


def resolve(choice: str, model_path: Optional[str | Path], task: Optional[str]) -> ResolvedFormat:
    """`choice` is a name in FORMATS or "auto"; `task` None means the recorded or default task."""
    if choice not in CHOICES:
        raise ValueError(f"unknown text format {choice!r}; choose one of {', '.join(CHOICES)}")
    recorded = recorded_format(model_path)
    if choice != "auto":
        recorded_task = recorded[1] if recorded and recorded[0].name == choice else None
        return ResolvedFormat(FORMATS[choice], task or recorded_task or DEFAULT_TASK, "flag")
    if recorded:
        fmt, recorded_task, source = recorded
        return ResolvedFormat(fmt, task or recorded_task, source)
    return ResolvedFormat(PLAIN, task or DEFAULT_TASK, "default: the model records no format")


def record(model_path: str | Path, resolved: ResolvedFormat) -> None:
    """Write the format into a saved sentence-transformers folder: FORMAT_FILE and `prompts`."""
    folder = Path(model_path)
    (folder / FORMAT_FILE).write_text(json.dumps(resolved.format.to_json(resolved.task), indent=2) + "\n")
    config_path = folder / "config_sentence_transformers.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config["prompts"] = resolved.format.prompts(resolved.task)
    config["default_prompt_name"] = None
    config_path.write_text(json.dumps(config, indent=2) + "\n")
