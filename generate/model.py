"""The language model: Embedding → stacked GRU → Linear, with the hidden state passed in and out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from generate.gru import GRU, gru_stack, layer_weights


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
    def from_config(cls, vocab_size: int, cfg: Any) -> ModelSpec:
        names = {f.name for f in fields(cls)} - {"vocab_size"}
        return cls(vocab_size=vocab_size, **{name: cfg[name] for name in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GRULanguageModel(nn.Module):
    # True: the fused recurrence of generate/gru.py runs both forms, reset_after=True with nn.GRU's
    # own parameters, except on CUDA where reset_after=True runs nn.GRU itself (cuDNN). False:
    # every call goes through self.rnn as built (nn.GRU; the seed GRU, whose own `fused` flag
    # picks its path); benchmarks use it to measure what the fast path gains. Not part of the
    # spec: it changes speed, not results.
    fused: bool = True
    FUSED_MIN_STEPS_NO_GRAD = 64  # measured crossover, see docs/performance.md

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
        if self.fused and not (self.spec.reset_after and (tokens.is_cuda or self._short_inference(tokens))):
            # Time-major throughout, so every step of the recurrence reads contiguous memory;
            # only the logits (V wide, the narrowest tensor) are turned back to batch-first.
            x = self.dropout(self.embedding(tokens.t()))  # (T, B, E)
            output, hidden = gru_stack(
                x, hidden, layer_weights(self.rnn), self.spec.reset_after, self.rnn.dropout, self.training
            )  # (T, B, H), (L, B, H)
            return self.head(self.dropout(output)).transpose(0, 1).contiguous(), hidden
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        output, hidden = self.rnn(x, hidden)  # (B, T, H), (L, B, H)
        return self.head(self.dropout(output)), hidden

    def _short_inference(self, tokens: Tensor) -> bool:
        # Without gradients and for a few steps (a beam-search step, a short prime), nn.GRU's C++
        # loop beats ours: its fixed cost per call is lower, and there is no backward to win on.
        return tokens.shape[1] < self.FUSED_MIN_STEPS_NO_GRAD and not torch.is_grad_enabled()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Stepper:
    """Advance a model one token at a time from a carried state, for sampling.

    Equal to calling the model on one token at a time in eval mode, but without its per-call
    costs: weights are laid out once for a vector-matrix product (transposed, contiguous), biases
    are folded, layer 0's input projection becomes a row lookup (embedding @ W_ih^T precomputed
    for the whole vocabulary), and every step writes into buffers allocated here, so a step is
    ~8 small kernels per layer and no Python object or tensor is created.
    """

    def __init__(self, model: GRULanguageModel, hidden: Tensor):
        """hidden: (L, N, H), the state after the prime; copied (the caller's tensor is not changed)."""
        spec = model.spec
        self.reset_after, self.hidden_size = spec.reset_after, spec.hidden_size
        size, batch = spec.hidden_size, hidden.shape[1]
        with torch.no_grad():
            self.layers: list[dict[str, Tensor]] = []
            for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(layer_weights(model.rnn)):
                w_ih, w_hh, b_ih, b_hh = w_ih.float(), w_hh.float(), b_ih.float(), b_hh.float()
                if spec.reset_after:
                    bias = b_ih + torch.cat([b_hh[: 2 * size], torch.zeros_like(b_hh[2 * size :])])
                else:
                    bias = b_ih + b_hh
                entry = {"bias": bias, "w_ih_t": w_ih.t().contiguous()}
                if layer == 0:  # (V, 3H): the embedding's projection, looked up by token id
                    entry["table"] = torch.addmm(bias, model.embedding.weight.float(), w_ih.t())
                if spec.reset_after:
                    entry["w_hh_t"] = w_hh.t().contiguous()  # (H, 3H)
                    entry["b_hh"] = torch.cat([torch.zeros_like(b_hh[: 2 * size]), b_hh[2 * size :]])
                else:
                    entry["w_rz_t"] = w_hh[: 2 * size].t().contiguous()  # (H, 2H)
                    entry["w_n_t"] = w_hh[2 * size :].t().contiguous()  # (H, H)
                self.layers.append(entry)
            self.head_w_t = model.head.weight.float().t().contiguous()  # (H, V)
            self.head_b = model.head.bias.float()
        device = hidden.device
        self.hidden = hidden.float().clone().contiguous()  # (L, N, H), updated in place every step
        self.gi = torch.empty(batch, 3 * size, device=device)  # input projections (+ folded biases)
        self.gh = torch.empty(batch, 3 * size, device=device)  # recurrent products
        self.rh = torch.empty(batch, size, device=device)  # r ⊙ h (seed form)
        self.logits = torch.empty(batch, spec.vocab_size, device=device)
        # Views made once, so the step itself builds none.
        g, h = self.gi, self.gh
        self.gi_rz, self.gi_r, self.gi_z, self.gi_n = g[:, : 2 * size], g[:, :size], g[:, size : 2 * size], g[:, 2 * size :]
        self.gh_rz, self.gh_r, self.gh_z, self.gh_n = h[:, : 2 * size], h[:, :size], h[:, size : 2 * size], h[:, 2 * size :]
        self.states = list(self.hidden.unbind(0))

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """tokens: (N,) int64 → logits (N, V) for the next token (a buffer overwritten by the next step)."""
        x: Tensor | None = None
        for layer, (p, h) in enumerate(zip(self.layers, self.states, strict=True)):
            if layer == 0:
                torch.index_select(p["table"], 0, tokens, out=self.gi)
            else:
                torch.addmm(p["bias"], x, p["w_ih_t"], out=self.gi)
            if self.reset_after:
                torch.addmm(p["b_hh"], h, p["w_hh_t"], out=self.gh)
                self.gi_rz.add_(self.gh_rz).sigmoid_()  # r, z
                self.gi_n.addcmul_(self.gi_r, self.gh_n).tanh_()  # n = tanh(x_n + r ⊙ (W_hn h + b_hn))
                torch.lerp(self.gi_n, h, self.gi_z, out=h)  # n + z (h − n)
            else:
                torch.addmm(self.gi_rz, h, p["w_rz_t"], out=self.gh_rz).sigmoid_()  # r, z
                torch.mul(self.gh_r, h, out=self.rh)  # reset before the product (seed form)
                torch.addmm(self.gi_n, self.rh, p["w_n_t"], out=self.gh_n).tanh_()  # h̃
                torch.lerp(h, self.gh_n, self.gh_z, out=h)  # h + z (h̃ − h)
            x = h
        return torch.addmm(self.head_b, x, self.head_w_t, out=self.logits)
