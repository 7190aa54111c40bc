"""The teacher's training texts: FRet's three jobs, rendered by the job's own prompt code.

Every text is (shared, rest, answer): the served model sees shared + rest as its prompt, exactly
as the job sends it, and learns answer. `shared` is the part of the prompt that does not depend
on the pair (instruction and few-shot examples), so the trainer computes it once per batch.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Callable, Sequence

from pipeline.generation import render_generation_prompt
from pipeline.prompts import load_prompt
from pipeline.rerank import Candidate, rc_prompt, ql_request
from pipeline.teacher.corpus import DocPair
from schemas import Passage, QueryKnobs, QueryRecord

# The tasks the teacher writes, and reads in QL and RC prompts.
TASKS = (
    "Given a one-line summary of a function or class, find its documentation",
    "Given a description of what some code does, find the docstring that documents it",
    "Given a question about a library's API, find the passage that answers it",
    "Given a web search query, find a passage that might show up as a search result",
)
RELEVANCE = ("highly_relevant", "somewhat_relevant", "not_relevant")
_SENTINEL = "\x01{}\x01"
MAX_CHARS = 4000  # the job's default max_passage_chars


@dataclasses.dataclass(frozen=True)
class TrainingText:
    job: str  # query_generation | query_likelihood | relevance_classification
    shared: str
    rest: str
    answer: str


def query_length_knob(summary: str) -> str:
    words = len(summary.split())
    return "short" if words <= 6 else "medium" if words <= 15 else "long"


def _passage(title: str, text: str) -> Passage:
    return Passage(id="p", title=title, text=text, source_id="p")


def _query(task: str, query: str) -> QueryRecord:
    knobs = QueryKnobs(query_length="short", difficulty="easy")
    return QueryRecord(query_id="q", passage_id="p", task=task, query=query, knobs=knobs)


def _candidate(title: str, text: str) -> Candidate:
    return Candidate(passage_id="p", title=title, text=text, is_seed=True, retrieval_rank=1, retrieval_score=None)


def _split(render: Callable[[str, str, str, str], str], title: str, text: str, task: str, query: str
           ) -> tuple[str, str]:
    """(shared, rest): the prompt cut before the last line break ahead of the first pair-specific value."""
    probe = render(*(_SENTINEL.format(name) for name in ("title", "text", "task", "query")))
    first = min(probe.index(_SENTINEL.format(name)) for name in ("title", "text", "task", "query")
                if _SENTINEL.format(name) in probe)
    cut = probe.rindex("\n", 0, first) + 1
    # Cut before a run of whitespace, not inside it: byte-level BPE tokenizes a trailing "\n\n"
    # as one token but "\n\nTask" as two, and the server sees the whole prompt.
    cut = len(probe[:cut].rstrip())
    full = render(title, text, task, query)
    if full[:cut] != probe[:cut]:
        raise ValueError("the prompt's shared part changed with its values")
    return full[:cut], full[cut:]


class TextRenderer:
    """Renders TrainingTexts with the job's current prompt versions and a chat template."""

    def __init__(self, chat: Callable[[str], str]):
        self.chat = chat  # user message -> the text the server builds with the chat template
        self.qg = load_prompt("query_generation")
        self.ql = load_prompt("query_likelihood")
        self.rc = load_prompt("relevance_classification")

    def generation(self, pair: DocPair, task: str, difficulty: str) -> TrainingText:
        knobs = QueryKnobs(query_length=query_length_knob(pair.summary), difficulty=difficulty)

        def render(title, text, _task, _query):
            return self.chat(render_generation_prompt(self.qg, _passage(title, text), knobs, MAX_CHARS))

        shared, rest = _split(render, pair.title, pair.body, task, pair.summary)
        # Compact, as the server's JSON grammar allows no whitespace between tokens.
        answer = json.dumps({"task": task, "query": pair.summary}, ensure_ascii=False, separators=(",", ":"))
        return TrainingText("query_generation", shared, rest, answer)

    def likelihood(self, pair: DocPair, task: str) -> TrainingText:
        def render(title, text, task_, query):
            return ql_request(self.ql, _query(task_, query), _candidate(title, text), MAX_CHARS)[0]

        shared, rest = _split(render, pair.title, pair.body, task, pair.summary)
        return TrainingText("query_likelihood", shared, rest, " " + pair.summary)

    def relevance(self, query_pair: DocPair, passage: DocPair, task: str, label: str) -> TrainingText:
        def render(title, text, task_, query):
            return rc_prompt(self.rc, _query(task_, query), _candidate(title, text), MAX_CHARS)

        shared, rest = _split(render, passage.title, passage.body, task, query_pair.summary)
        return TrainingText("relevance_classification", shared, rest, self.rc.labels[label]["text"])


def _parent(title: str) -> str:
    return title.rsplit(".", 1)[0]


def distractor(pairs: Sequence[DocPair], i: int, siblings: dict[str, list[int]], by_package: dict[str, list[int]],
               rng: random.Random) -> DocPair | None:
    """A passage of the same package, as close as it comes: a sibling (same class or module) when
    there is one. Retrieval's top candidates are that close, so the teacher must tell them apart."""
    for group in (siblings[_parent(pairs[i].title)], by_package[pairs[i].package]):
        others = [j for j in group if j != i]
        if others:
            return pairs[rng.choice(others)]
    return None


def other_package_passage(pairs: Sequence[DocPair], pair: DocPair, by_package: dict[str, list[int]],
                          rng: random.Random) -> DocPair:
    """A random passage of another package (any passage when there is only one package)."""
    other = pairs[rng.randrange(len(pairs))]
    while other.package == pair.package and len(by_package) > 1:
        other = pairs[rng.randrange(len(pairs))]
    return other


def groups(pairs: Sequence[DocPair]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    siblings: dict[str, list[int]] = {}
    by_package: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        siblings.setdefault(_parent(pair.title), []).append(i)
        by_package.setdefault(pair.package, []).append(i)
    return siblings, by_package


def training_texts(pairs: Sequence[DocPair], renderer: TextRenderer, seed: int) -> list[TrainingText]:
    """For every pair: one generation, one likelihood and one relevance text. Relevance cycles
    through the labels: the true passage, a close passage of the same package, one of another package."""
    rng = random.Random(seed)
    siblings, by_package = groups(pairs)
    texts: list[TrainingText] = []
    for i, pair in enumerate(pairs):
        task = rng.choice(TASKS)
        texts.append(renderer.generation(pair, task, rng.choice(("easy", "medium", "hard"))))
        texts.append(renderer.likelihood(pair, task))
        label, other = RELEVANCE[i % 3], pair
        if label == "somewhat_relevant":
            other = distractor(pairs, i, siblings, by_package, rng)
            label, other = ("somewhat_relevant", other) if other else ("highly_relevant", pair)
        elif label == "not_relevant":
            other = other_package_passage(pairs, pair, by_package, rng)
        texts.append(renderer.relevance(pair, other, task, label))
    return texts
