"""Names every transform module of the FRet job shares.

Every transform that can reject elements returns a main output plus an OUTCOME output of
pipeline.accounting.Outcome records, so the job can prove that every seed passage was written,
filtered or dead-lettered.
"""

NS = "fret"  # the Beam metrics namespace
OUTCOME = "outcome"  # the tag of every transform's outcome output
TOKENS = "tokens"  # the tag of every LLM stage's token usage output (one pipeline.llm.usage.UsageMeter per batch)


class SharedBox:
    """Shared.acquire needs a weak-referenceable object: a tokenizer or embedder rides in one."""

    def __init__(self, value):
        self.value = value
