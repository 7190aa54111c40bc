"""Stand-ins for a SentenceTransformer in loss tests: features["rows"] picks rows of fixed tables."""

import torch
from torch import nn


class TableModel(nn.Module):
    """sentence_embedding rows of `table`; with `tokens` (R, L, d), token_embeddings rows too."""

    def __init__(self, table: torch.Tensor, tokens: torch.Tensor | None = None):
        super().__init__()
        self.table, self.tokens = table, tokens

    def forward(self, features):
        out = {"sentence_embedding": self.table[features["rows"]]}
        if self.tokens is not None:
            out["token_embeddings"] = self.tokens[features["rows"]]
            out["attention_mask"] = features["attention_mask"]
        return out

    def _get_untruncated_embedding_dimension(self) -> int:
        return self.table.shape[1]

    def get_embedding_dimension(self) -> int:
        return self.table.shape[1]


def text_features(token_ids: list[list[int]]) -> dict:
    """input_ids and attention_mask of texts given as token ids, right-padded with 0."""
    width = max(len(t) for t in token_ids)
    ids = torch.tensor([t + [0] * (width - len(t)) for t in token_ids])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in token_ids])
    return {"input_ids": ids, "attention_mask": mask}
