"""The start-up probe: does the server have what the job's scoring needs?"""

from __future__ import annotations

from pipeline.llm.client import LLMClient
from pipeline.llm.types import LLMError

SCORING_NEEDS = {
    "echo": "prompt log-probabilities with echo=true on /v1/completions (query likelihood and --rc_method exact)",
    "tokenize": "POST /tokenize (--rc_method first_token)",
    "logprob_token_ids": "logprob_token_ids on /v1/completions (--rc_method first_token)",
}


PROBE_PREFIX = "fret capability probe. Paris is the capital of"
PROBE_REQUEST_ID = "fret-capability-probe"  # the token endpoint's probe request carries it


class ProbeError(LLMError):
    """The server did not answer the probe at all (down, refused the key, ...)."""


async def probe_scoring_support(client: LLMClient, rc_method: str) -> list[str]:
    """What the server lacks for the scoring the job will do: an empty list when it has it all.
    Raises ProbeError when the server cannot be asked at all.

    Generation only needs an OpenAI-compatible chat endpoint with json_schema response_format;
    scoring needs vLLM's extensions, so other servers (SGLang, TGI, llama.cpp) are refused at
    start-up with the feature named, not halfway through a paid run."""
    missing = []
    ql = await client.query_likelihood(PROBE_PREFIX, " France")
    refused = ql.reason == "http_error" and not any(f"HTTP {code}" in ql.detail for code in (401, 403))
    if not ql.ok and ql.reason != "bad_response" and not refused:  # down, timed out or the key was refused
        raise ProbeError(ql.detail, ql.reason or "http_error")
    if not ql.ok:
        missing.append("echo")
    if rc_method == "first_token":
        try:
            ids = await client.label_first_tokens([" Yes", " No"])
        except LLMError as exc:
            if exc.reason != "http_error":
                raise ProbeError(str(exc), exc.reason) from None
            missing.append("tokenize")
        else:
            labels = await client._label_first_token(PROBE_PREFIX + " France? Answer:", [" Yes", " No"])
            if not labels.ok or not ids:
                missing.append("logprob_token_ids")
    return missing


async def prefix_cache_ql_missing(config) -> str:
    """What keeps QL from reading the prefix cache on some server of the fleet ('' when none does).
    It needs vLLM's token endpoint (`--enable-scale-out`) with /tokenize, and cached-token counts in
    its answers' usage (`--enable-prompt-tokens-details`): without the counts no answer can be
    checked against stale rows, so every one would be sent again uncached, at twice echo's cost."""
    import dataclasses

    from pipeline.llm.types import HTTPStatusError
    from pipeline.llm.usage import cached_tokens

    for url in config.base_urls:
        async with LLMClient(dataclasses.replace(config, base_urls=(url,), max_retries=1)) as client:
            try:
                ids = await client.tokenize(PROBE_PREFIX, special_tokens=True)
                payload, _ = await client._generate_tokens(ids, read_cache=False, route_key=None,
                                                           request_id=PROBE_REQUEST_ID)
            except HTTPStatusError:  # 404 where the endpoint is not served, 400/405 where it differs
                return f"the server at {url} has no token endpoint (start vLLM with --enable-scale-out)"
            except LLMError as exc:
                if exc.reason == "http_error":
                    return f"the server at {url} has no token endpoint (start vLLM with --enable-scale-out)"
                raise ProbeError(str(exc), exc.reason) from None
            if cached_tokens(payload.get("usage") or {}) is None:
                return (f"the server at {url} reports no cached-token counts, so no answer read from its cache "
                        "could be checked (start vLLM with --enable-prompt-tokens-details)")
    return ""
