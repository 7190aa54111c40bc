"""The models as journal keys name them (pipeline.model_identity): the LLM, the cross-encoder and
the retrieval embedder, found once per run in the driver (`journal_models`) and handed to every
stage and the manifest. A server that cannot be asked is known by its model's name, as before: a
key can only get more specific, never reuse a different model's entry."""

from __future__ import annotations

from beam_jobs import options as opt
from beam_jobs import rerank_options as ropt
from beam_jobs.preflight import served_root
from pipeline.model_identity import local_identity, served_identity
from pipeline.model_paths import resolve_model_path

ASK_TIMEOUT_S = 5.0  # the server answered discover/check moments ago; a dry run may have none


def journal_models(opts: opt.FretOptions, model: str) -> dict[str, str]:
    """{"embedder", and "llm" when an LLM is used, "cross_encoder" when --scores has ce}: the keys'
    names for this run's models; the manifest records the same dict."""
    models = {"embedder": embedder_identity(opts)}
    if model != "none":
        models["llm"] = llm_identity(opts, model)
    if "ce" in ropt.score_names(opts):
        models["cross_encoder"] = reranker_identity(opts)
    return models


def llm_identity(opts: opt.FretOptions, model: str) -> str:
    if opts.llm_serve:  # the job starts vLLM on this folder (or hub id) itself
        return local_identity(model, opts.llm_serve)
    urls = [u.strip() for u in opts.llm_url.split(",") if u.strip()]
    if not urls or model == "none":
        return model
    return served_identity(model, served_root(urls[0], opt.api_key(opts), model, ASK_TIMEOUT_S))


def reranker_identity(opts: opt.FretOptions) -> str:
    client = ropt.reranker_client(opts)
    if opts.reranker_api == "tei":  # TEI lists no models at /v1/models
        return client.model
    return served_identity(client.model, served_root(client.base_urls[0], client.api_key, client.model, ASK_TIMEOUT_S))


def embedder_identity(opts: opt.FretOptions) -> str:
    spec = opt.retrieval_embedder(opts)
    if opts.embedder_url:
        model = spec.client.model
        return f"served:{served_identity(model, served_root(spec.client.base_urls[0], spec.client.api_key, model, ASK_TIMEOUT_S))}"
    try:
        path = resolve_model_path(opts.embedder)
    except ValueError:  # a folder without a model: the embedder's own load says so
        return opts.embedder
    return local_identity(opts.embedder, path)
