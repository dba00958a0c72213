"""The language model: Embedding → stacked GRU → Linear, with the hidden state passed in and out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from generate.gru import GRU


@dataclass
class ModelSpec:
    """Everything needed to rebuild the model; stored in every checkpoint."""

    vocab_size: int
    embedding_size: int = 128
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.1
    reset_after: bool = True
    tie_weights: bool = False

    @classmethod
    def from_config(cls, vocab_size: int, cfg: Any) -> "ModelSpec":
        names = {f.name for f in fields(cls)} - {"vocab_size"}
        return cls(vocab_size=vocab_size, **{name: cfg[name] for name in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GRULanguageModel(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        if spec.tie_weights and spec.embedding_size != spec.hidden_size:
            raise ValueError(
                f"model.tie_weights=true needs model.embedding_size == model.hidden_size "
                f"(got {spec.embedding_size} and {spec.hidden_size})"
            )
        self.embedding = nn.Embedding(spec.vocab_size, spec.embedding_size)
        self.dropout = nn.Dropout(spec.dropout)
        rnn_dropout = spec.dropout if spec.num_layers > 1 else 0.0
        if spec.reset_after:
            self.rnn: nn.Module = nn.GRU(
                spec.embedding_size, spec.hidden_size, spec.num_layers, batch_first=True, dropout=rnn_dropout
            )
        else:
            self.rnn = GRU(spec.embedding_size, spec.hidden_size, spec.num_layers, rnn_dropout, reset_after=False)
        self.head = nn.Linear(spec.hidden_size, spec.vocab_size)
        if spec.tie_weights:
            self.head.weight = self.embedding.weight

    def init_hidden(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(self.spec.num_layers, batch_size, self.spec.hidden_size, device=device)

    def forward(self, tokens: Tensor, hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tokens: (B, T) int64, hidden: (L, B, H) → logits (B, T, V), hidden (L, B, H)."""
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        output, hidden = self.rnn(x, hidden)  # (B, T, H), (L, B, H)
        return self.head(self.dropout(output)), hidden

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
