"""What the job checks and prepares before any work: the server, the input, the output folder."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.parse
import urllib.request

from apache_beam.io.filesystems import FileSystems

from beam_jobs.index_files import INDEX_DIR
from beam_jobs.journal import JOURNAL_DIR
from beam_jobs.outputs import BeamStore
from beam_jobs.scratch import SCRATCH_DIR
from pipeline import ownership, processes
from pipeline.ingest import DEFAULT_FIELDS, InputFields
from pipeline.llm.types import ClientConfig
from pipeline.ownership import Claim


def served_models(base_url: str, api_key: str | None, timeout: float = 30.0, what: str = "LLM server") -> list[str]:
    """The model names an OpenAI-compatible server lists at /v1/models. A clear error when it cannot
    be reached, refuses the key, or answers but is not such a server (a web server on that port)."""
    return [str(m["id"]) for m in _model_entries(base_url, api_key, timeout, what)]


def served_root(base_url: str, api_key: str | None, model: str, timeout: float = 30.0) -> str | None:
    """The weights a server says it loaded for `model` (vLLM's `root`: the path or hub id it was
    started on); None when it does not say or cannot be asked."""
    try:
        entries = _model_entries(base_url, api_key, timeout, "server")
    except ValueError:
        return None
    roots = [m.get("root") for m in entries if str(m.get("id")) == model]
    return str(roots[0]) if roots and roots[0] else None


def _model_entries(base_url: str, api_key: str | None, timeout: float, what: str) -> list[dict]:
    import urllib.error

    url = base_url.rstrip("/") + "/v1/models"
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    not_openai = (f"the {what} at {base_url} answered, but not as an OpenAI-compatible server (fret needs one, such "
                  "as vLLM; `fret serve MODEL` starts one)")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:  # it answered: not the same as unreachable
        if exc.code in (401, 403):
            raise ValueError(f"the {what} at {base_url} refused the API key (HTTP {exc.code} on GET /v1/models); "
                             "check --llm_api_key_env / --llm_api_key_file") from None
        raise ValueError(f"{not_openai}: GET /v1/models gave HTTP {exc.code} {exc.reason}") from None
    except OSError as exc:
        raise ValueError(f"cannot reach the {what} at {base_url} ({exc}); {url_hint(base_url)}") from None
    try:
        models = json.loads(body)["data"]
        return [dict(m, id=m["id"]) for m in models]
    except (ValueError, KeyError, TypeError):
        start = body[:60].decode("utf-8", "replace").replace("\n", " ")
        raise ValueError(f"{not_openai}: GET /v1/models gave no model list (it began {start!r})") from None


def discover_model(base_url: str, api_key: str | None, timeout: float = 30.0, what: str = "LLM server",
                   flag: str = "--llm_model") -> str:
    """The first model the server lists; a clear error when it cannot be reached."""
    models = served_models(base_url, api_key, timeout, what)
    if not models:
        raise ValueError(f"the {what} at {base_url} lists no models; pass {flag}")
    return models[0]


def check_model_served(base_urls, api_key: str | None, model: str, what: str = "LLM server",
                       flag: str = "--llm_model") -> None:
    """Every server of the fleet serves `model`: a wrong name is said as such (with the names the
    server does serve), not as a server that lacks features."""
    for url in base_urls:
        models = served_models(url, api_key, what=what)
        if model not in models:
            listed = ", ".join(models[:10]) or "none"
            raise ValueError(f"the {what} at {url} serves no model {model!r}; it serves: {listed}. Pass {flag} "
                             f"{models[0] if models else 'NAME'}, or leave {flag} out for the server's first model")


def check_served_embedder(spec) -> int:
    """One embedding request before any work: the endpoint answers vectors, of --embedder_dim when
    given. Returns the dimension, which every later answer must have."""
    from pipeline.llm.embeddings import EmbeddingError, RemoteEmbedder

    embedder = None
    try:
        embedder = RemoteEmbedder(spec)  # without --embedder_dim, its one request finds the dimension
        if spec.dim:
            embedder.encode(["a dimension check"])  # with it, one request checks it
    except EmbeddingError as exc:
        raise ValueError(f"the embedder endpoint {', '.join(spec.client.base_urls)} cannot embed: {exc}") from None
    finally:
        if embedder is not None:
            embedder.close()
    return embedder.dim


def check_reranker(config: ClientConfig, api: str) -> None:
    """One (query, two passages) request before any work: the endpoint answers two finite scores."""
    from pipeline.llm.client import LLMClient
    from pipeline.llm.reranker import score_candidates
    from pipeline.rerank import Candidate
    from schemas import DeadLetter, QueryRecord

    query = QueryRecord(query_id="check", passage_id="", task="check", query="a reranker check")
    candidates = [Candidate(f"c{i}", "", text, False, i + 1, None) for i, text in enumerate(("one text", "another"))]

    async def probe():
        async with LLMClient(config) as client:
            return await score_candidates(client, api, config.model, query, candidates)

    result = asyncio.run(probe())
    if isinstance(result, DeadLetter):
        raise ValueError(f"the cross-encoder endpoint {', '.join(config.base_urls)} (--reranker-api {api}) cannot "
                         f"score: {result.detail.split(': ', 1)[-1]}")


def check_scoring_support(client: ClientConfig, rc_method: str) -> None:
    """Refuse to start against a server that cannot score, naming what it lacks."""
    from pipeline.llm.client import LLMClient
    from pipeline.llm.probe import SCORING_NEEDS, ProbeError, probe_scoring_support

    async def probe():
        async with LLMClient(client) as llm:
            return await probe_scoring_support(llm, rc_method)

    try:
        missing = asyncio.run(probe())
    except ProbeError as exc:
        raise ValueError(f"the LLM server at {client.base_urls[0]} did not answer: {exc}") from None
    if missing:
        needs = "; ".join(SCORING_NEEDS[m] for m in missing)
        hint = (" --rc_method exact avoids /tokenize and logprob_token_ids." if "echo" not in missing else
                " Generation works on any OpenAI-compatible server, but QL and RC scoring need vLLM.")
        raise ValueError(f"the LLM server at {client.base_urls[0]} lacks what scoring needs: {needs}.{hint}")


def resolve_ql_path(requested: str, client: ClientConfig, serving_ourselves: bool, translating: bool) -> str:
    """--ql_path auto -> prefix_cache where every server can serve QL from its prefix cache (token
    endpoint and cached-token counts), else echo, said in one line. A server this job starts itself
    (--llm_serve) has both; an offline translation cannot ask."""
    from pipeline.llm.probe import ProbeError, prefix_cache_ql_missing

    if requested != "auto" and (serving_ourselves or translating):
        return requested
    if serving_ourselves or translating:
        return "prefix_cache" if serving_ourselves else "echo"
    try:
        missing = asyncio.run(prefix_cache_ql_missing(client))
    except ProbeError as exc:
        raise ValueError(f"the LLM server at {client.base_urls[0]} did not answer: {exc}") from None
    if requested == "prefix_cache" and missing:
        raise ValueError(f"--ql_path prefix_cache cannot be used: {missing}. fret serve starts vLLM with both; "
                         "or use --ql_path echo")
    if requested == "auto":
        if missing:
            print(f"[fret] QL takes the echo path: {missing}; with it, QL would read the prefix cache for about a "
                  "third of the LLM compute", file=sys.stderr, flush=True)
        return "echo" if missing else "prefix_cache"
    return requested


def url_hint(base_url: str) -> str:
    """What is likely wrong with a server URL that did not answer."""
    path = urllib.parse.urlparse(base_url).path.rstrip("/")
    if path.endswith("/v1"):
        return (f"drop the /v1: --llm_url takes the server's base URL "
                f"({base_url.rstrip('/')[:-len('/v1')]}), the job adds /v1/ itself")
    return ("start the server (`fret serve MODEL` starts vLLM on a model folder) or fix --llm_url "
            "(the base URL, e.g. http://127.0.0.1:8000)")


def matched_files(patterns: str, flag: str = "--input") -> list[str]:
    """Every file the comma-separated globs match, once each, in order; refuse a glob that
    matches nothing."""
    paths: dict[str, None] = {}
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        if not found:
            raise ValueError(f"{flag} {pattern!r} matches no file; check the path or glob")
        paths.update(dict.fromkeys(found))
    return list(paths)


def check_given_queries(patterns: str, layout: str, split: str) -> None:
    """--queries names files that exist, or a BEIR folder with the split's qrels."""
    from beam_jobs.given import beir_folder

    folder = beir_folder(patterns, layout)
    if folder:
        for needed in (f"{folder}/queries.jsonl", f"{folder}/qrels/{split}.tsv"):
            if not FileSystems.exists(needed):
                raise ValueError(f"--queries {folder!r} is read as a BEIR folder, but {needed} does not exist"
                                 + (" (--queries_split names the qrels file)" if "qrels" in needed else ""))
        return
    matched_files(patterns, "--queries")


JSONL_PEEK = 100  # lines of the first JSONL file looked at for the text field
PARQUET_PEEK = 50  # Parquet files whose schema is read (a footer each)


def check_inputs(patterns: str, input_format: str = "auto", fields: InputFields = DEFAULT_FIELDS) -> None:
    """Fail before the job starts when a glob matches nothing, or when the input has no text field:
    a Parquet schema is free to read; of JSONL, the first lines of the first file are read."""
    import pyarrow.parquet as pq

    from beam_jobs.read import is_parquet

    paths = matched_files(patterns)
    how = "--text-field names the column that holds the passage text"
    for path in [p for p in paths if is_parquet(p, input_format)][:PARQUET_PEEK]:
        with FileSystems.open(path) as f:
            try:
                names = pq.read_schema(f).names
            except Exception as exc:  # noqa: BLE001 - arrow raises several kinds for a bad file
                raise ValueError(f"input {path} is not a readable Parquet file: {exc}") from None
        if fields.text not in names:
            raise ValueError(f"input {path} has no {fields.text!r} column; its columns: {', '.join(names)}. {how}")
    jsonl = [p for p in paths if not is_parquet(p, input_format)]
    if jsonl:
        seen: dict[str, None] = {}
        objects = 0
        with FileSystems.open(jsonl[0]) as f:
            for _, line in zip(range(JSONL_PEEK), f):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a malformed line is dead-lettered with its reason, not refused here
                if isinstance(record, dict):
                    objects += 1
                    if fields.text in record:
                        return
                    seen.update(dict.fromkeys(map(str, record)))
        if objects:
            raise ValueError(f"none of the first {objects} records of {jsonl[0]} has a {fields.text!r} field; "
                             f"their fields: {', '.join(seen)}. {how}")


OUTPUT_PARTS = ("examples", "dead_letters", "filtered", "manifest.json")
# Under each dataset part: Beam's shards (part-...), its temporary folders and interrupted atomic writes.
PART_FILES = ("part*", "beam-temp-*", ".*.partial")
SCRATCH = (INDEX_DIR, SCRATCH_DIR)  # the search's shard files and the waves' records: removed when a run ends


def run_claims() -> list[Claim]:
    """Everything a fret run writes in its --output, as pipeline.ownership claims."""
    return [*(Claim(part, PART_FILES) for part in OUTPUT_PARTS[:3]), Claim("manifest.json"),
            Claim(JOURNAL_DIR, ("*",)), *(Claim(name, ("*",)) for name in SCRATCH)]


def prepare_output(output: str, overwrite: bool, resume: bool = False, apply: bool = True,
                   run_id: str = "check") -> None:
    """Claim the output folder for this run (pipeline.ownership), or refuse to mix a new run into an
    old one unless told to replace it (--overwrite) or to finish it (--resume: the journal is kept,
    the dataset files are rebuilt from it). Only what the folder's marker says fret wrote is ever
    removed, and a folder holding anything else is refused."""
    if overwrite and resume:
        raise ValueError("--overwrite and --resume contradict each other: --overwrite starts over, --resume reuses "
                         "the finished LLM work in the output folder")
    output = output.rstrip("/")
    store = BeamStore()
    unfinished = any(rel.startswith(JOURNAL_DIR + "/") for rel in store.files(output))
    hint = ("pass --resume to finish that run, reusing its finished LLM work, or --overwrite to start over"
            if unfinished else "choose a new --output or pass --overwrite to replace it")
    ownership.take(store, output, "run", run_claims(), run_id, overwrite=overwrite, resume=resume,
                   keep=(JOURNAL_DIR,), apply=apply, hint=hint)


def remove_run_parts(output: str, parts) -> list[str]:
    """Delete fret's files of the named parts of a run folder (scratch at the end, partial shards
    on Ctrl-C); a user's file there stays."""
    return ownership.remove(BeamStore(), output, parts)


def remove_partial(output: str) -> None:
    """An interrupted or failed run (or remine) leaves no dataset shard without its manifest, and no
    scratch; the journal stays for --resume. Only fret's files go, by the folder's marker."""
    if output and FileSystems.exists(output) and not FileSystems.exists(f"{output}/manifest.json"):
        remove_run_parts(output, (*OUTPUT_PARTS, *SCRATCH))


@contextlib.contextmanager
def partial_removed_on_failure(output: str):
    """Around the work that follows prepare_output's claim (fret run, fret remine): any failed exit
    (an error, Ctrl-C, SIGTERM, SIGHUP) runs remove_partial. A command refused before its claim
    touches nothing."""
    try:
        with processes.on_signal(lambda: remove_partial(output)):
            yield
    except BaseException:
        remove_partial(output)
        raise
