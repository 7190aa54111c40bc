"""The shape every LLM stage shares: pipelined batches to one client per worker, journaled."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from beam_jobs.common import NS, OUTCOME, TOKENS
from beam_jobs.journal import LookupJournal, write_entries
from pipeline import journal
from pipeline.llm import usage
from pipeline.llm import blocking
from pipeline.llm.types import ClientConfig
from pipeline.progress import Progress
from pipeline.reliability import FailureGuard, FailurePolicy
from schemas import DeadLetter


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """What every LLM stage takes: the client, its batch size, whether to print progress, the
    journal folder (None: no journal), when to give up on a failing server, and the model's
    identity for journal keys."""

    client: ClientConfig
    batch_size: int = 16
    progress: bool = False
    journal_folder: Optional[str] = None
    failure: FailurePolicy = FailurePolicy()
    journal_model: str = ""  # the model as journal keys name it (beam_jobs.identities); "": the client's name

    @property
    def model_key(self) -> str:
        return self.journal_model or self.client.model

    def batched(self, batch_size: int) -> "StageSettings":
        return dataclasses.replace(self, batch_size=batch_size)


class LLMBatchDoFn(beam.DoFn):
    """Base: one BlockingLLM per worker process and client config (shared by every stage and
    thread), batches pipelined.

    A batch is submitted and process() returns at once, so the next batch's requests queue up
    behind the client's semaphore while this one finishes: the server never idles at a batch
    boundary. Finished batches are emitted in order; finish_bundle drains the rest. After each
    batch its work goes to the journal (a crash loses at most the batches in flight) and the
    failure guard (a dead server stops the job early). Outputs are in the global window."""

    STAGE = ""
    PROGRESS = ""  # the console label, e.g. "rerank (queries)"
    BATCHES_IN_FLIGHT = 4

    def __init__(self, settings: StageSettings):
        self._settings = settings
        self.requests = Metrics.counter(NS, "llm_requests")
        self.failures = Metrics.counter(NS, "llm_failures")
        self.retries = Metrics.counter(NS, "llm_retries")
        self.prompt_tokens = Metrics.counter(NS, "llm_prompt_tokens")
        self.completion_tokens = Metrics.counter(NS, "llm_completion_tokens")
        self.journaled = Metrics.counter(NS, f"journaled_{self.STAGE}")
        self.items_done = Metrics.counter(NS, f"{self.STAGE}_items_done")
        self.items_total = Metrics.gauge(NS, f"{self.STAGE}_items_total")
        self._total: Optional[int] = None

    def setup(self):
        config = self._settings.client
        if config.local_server is not None:
            from pipeline.llm.local_server import ensure_local_server

            ensure_local_server(config.local_server)  # the machine's one server; started by the first caller
        self._llm = blocking.acquire(config)  # one per process and config, shared by every stage
        journal = self._settings.journal_folder
        hint = (f"Check the LLM server ({', '.join(config.base_urls)}), then re-run with --resume: finished LLM "
                f"work is kept in {journal}." if journal else "Check the LLM server.")
        self._guard = FailureGuard(self.STAGE, self._settings.failure, hint)
        try:
            self._llm.wait_ready(timeout_s=max(60.0, config.timeout_s))  # before the first batch is sent
        except BaseException:
            self._llm.release()  # a DoFn whose setup failed gets no teardown
            raise

    def teardown(self):
        self._llm.release()

    def start_bundle(self):
        self._pending: collections.deque = collections.deque()

    def process(self, batch, total: Optional[int] = None):
        """`total`: the stage's item count (a side input), for progress and its ETA."""
        if total is not None and self._total is None:
            self._total = total
            self.items_total.set(total)
        Progress.begin(self.PROGRESS, self._settings.progress)
        request, stage = self._request(batch), self.STAGE
        self._pending.append((batch, self._llm.submit(lambda client: usage.measure(stage, request(client)))))
        yield from self._finished(wait=len(self._pending) > self.BATCHES_IN_FLIGHT)

    def finish_bundle(self):
        while self._pending:
            for out in self._finished(wait=True):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
                else:
                    yield GlobalWindows.windowed_value(out)

    def _finished(self, wait: bool):
        """Journal and emit every batch that is done, in whatever order they finish: one slow
        batch must not keep the finished ones out of the journal. With `wait`, block for one."""
        if wait:
            concurrent.futures.wait([f for _, f in self._pending], return_when=concurrent.futures.FIRST_COMPLETED)
        for item in [item for item in self._pending if item[1].done()]:
            self._pending.remove(item)
            yield from self._complete(*item)

    def _complete(self, batch, future):
        results, tokens = future.result()
        # The batch's own meter: a client shared by stages and threads is never diffed.
        totals = tokens.totals()
        for counter, name in ((self.requests, "requests"), (self.failures, "failures"), (self.retries, "retries"),
                              (self.prompt_tokens, "prompt_tokens"), (self.completion_tokens, "completion_tokens")):
            counter.inc(totals[name])
        outputs = list(self._outputs(batch, results))  # journals the batch
        # counted once journaled: a progress line never claims work an interruption would lose
        self.items_done.inc(len(batch))
        Progress.add(self.PROGRESS, len(batch), self._settings.progress, self._total)
        yield from outputs
        yield beam.pvalue.TaggedOutput(TOKENS, tokens)

    def _request(self, batch):
        """The batch's work: a function of the async client that returns one result per item."""
        raise NotImplementedError

    def _outputs(self, batch, results):
        """Journal, judge and emit one finished batch."""
        raise NotImplementedError

    def _settle(self, finished: list[tuple[str, list, Optional[str]]]) -> None:
        """(journal key, result records, failure reason or None) per item: journal first, then judge."""
        if self._settings.journal_folder:
            entries = [journal.entry(self.STAGE, key, records) for key, records, _ in finished
                       if records and journal.worth_keeping(records)]
            write_entries(self._settings.journal_folder, self.STAGE, entries)
            self.journaled.inc(len(entries))
        self._guard.record(reason for _, _, reason in finished)


def fixed_batches(size: int) -> beam.BatchElements:
    """Full batches from the start: BatchElements' adaptive sizing begins at 1, which starves
    the server of concurrent requests; LLM latency, not Beam overhead, sets the pace here."""
    return beam.BatchElements(min_batch_size=size, max_batch_size=size)


def failure_reason(records) -> Optional[str]:
    return next((r.reason for r in records if isinstance(r, DeadLetter)), None)


def journaled_llm_stage(items, settings: StageSettings, stage: str, key_fn, label: str, dofn, main: str, replay,
                        *replay_args) -> dict:
    """The shape of every LLM stage: items whose work is in the journal are replayed from it, the
    rest go to the LLM in fixed batches. Returns {main, "outcome", "reused": the replayed items,
    "tokens": one UsageMeter per batch sent}."""
    split = items | "Journal" >> LookupJournal(settings.journal_folder, stage, key_fn)
    total = split.todo | "CountTodo" >> beam.combiners.Count.Globally()
    fresh = (split.todo
             | "Batch" >> fixed_batches(settings.batch_size)
             | label >> beam.ParDo(dofn, total=beam.pvalue.AsSingleton(total)).with_outputs(OUTCOME, TOKENS, main=main))
    replayed = split.done | "Replay" >> beam.FlatMap(replay, *replay_args).with_outputs(OUTCOME, main=main)
    return {main: (fresh[main], replayed[main]) | f"Merge{main.title()}" >> beam.Flatten(),
            OUTCOME: (fresh[OUTCOME], replayed[OUTCOME]) | "MergeOutcomes" >> beam.Flatten(),
            "reused": split.done, TOKENS: fresh[TOKENS]}
