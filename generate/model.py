"""The language model: Embedding → stacked GRU → Linear, with the hidden state passed in and out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from generate import regularize
from generate.decoding import generate_tokens
from generate.gru import GRU, dropout, gru_stack, layer_weights
from generate.recurrence import fold_biases, gate_bias, tanh_for


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
    # Regularizers (generate/regularize.py), all off by default; checkpoints written before they
    # existed lack these keys and load with these defaults.
    embedding_dropout: float = 0.0  # drop whole embedding rows (token dropout), training only
    variational_dropout: bool = False  # the dropout masks are locked: one per sequence, shared by every step
    weight_drop: float = 0.0  # DropConnect on every W_hh, one mask per forward call, training only
    zoneout: float = 0.0  # each hidden unit keeps its previous value with this probability (expectation at eval)
    layer_norm: bool = False  # the layer-normalized GRU cell (learned gains)

    @property
    def regularized(self) -> bool:
        """Whether any regularizer is on (locked masks count only with model.dropout > 0)."""
        return self.needs_regularized_path(training=True)

    def needs_regularized_path(self, training: bool) -> bool:
        """Whether a forward call must run generate/regularize.py's stack: layer norm and zoneout always
        change the function; the other three act in training only, so evaluation keeps the fast paths."""
        if self.layer_norm or self.zoneout:
            return True
        return training and bool(self.embedding_dropout or self.weight_drop
                                 or (self.variational_dropout and self.dropout))

    @classmethod
    def from_config(cls, vocab_size: int, cfg: Any) -> ModelSpec:
        names = {f.name for f in fields(cls)} - {"vocab_size"}
        return cls(vocab_size=vocab_size, **{name: getattr(cfg, name) for name in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GRULanguageModel(nn.Module):
    # True: the fused recurrence of generate/gru.py runs both forms, reset_after=True with nn.GRU's
    # own parameters, except on CUDA where reset_after=True runs nn.GRU itself (cuDNN). False:
    # every call goes through self.rnn as built (nn.GRU; the seed GRU, whose own `fused` flag
    # picks its path); benchmarks use it to measure what the fast path gains. Not part of the
    # spec: it changes speed, not results.
    fused: bool = True
    # Without gradients the fused loop only pays from ~16-64 steps on (bench/sample_speed.py).
    FUSED_MIN_STEPS_NO_GRAD = 64

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
        if spec.layer_norm:  # registered only when on: checkpoints without it keep their keys
            self.norms = regularize.LayerNormGains(spec.hidden_size, spec.num_layers, spec.reset_after)

    def init_hidden(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.zeros(self.spec.num_layers, batch_size, self.spec.hidden_size, device=device)

    def forward(self, tokens: Tensor, hidden: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """tokens: (B, T) int64, hidden: (L, B, H) → logits (B, T, V), hidden (L, B, H)."""
        if self.spec.needs_regularized_path(self.training):
            return self._forward_regularized(tokens, hidden)
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

    def _forward_regularized(self, tokens: Tensor, hidden: Tensor | None) -> tuple[Tensor, Tensor]:
        # Always our own recurrence (never nn.GRU, also on CUDA): it is where the masks, zoneout and
        # layer norm are applied. Time-major, as the fused path above.
        spec, training = self.spec, self.training
        weight = regularize.embedding_dropout(self.embedding.weight, spec.embedding_dropout, training)
        x = dropout(nn.functional.embedding(tokens.t(), weight), spec.dropout, training, spec.variational_dropout)
        output, hidden = regularize.stack(x, hidden, layer_weights(self.rnn), getattr(self, "norms", None), spec, training)
        output = dropout(output, spec.dropout, training, spec.variational_dropout)
        return self.head(output).transpose(0, 1).contiguous(), hidden

    def _short_inference(self, tokens: Tensor) -> bool:
        # Without gradients and for a few steps (a beam-search step, a short prime), nn.GRU's C++
        # loop beats ours: its fixed cost per call is lower, and there is no backward to win on.
        return tokens.shape[1] < self.FUSED_MIN_STEPS_NO_GRAD and not torch.is_grad_enabled()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def step_weights(self) -> StepWeights:
        """The weights in Stepper's layout, rebuilt only when a parameter changed (replaced, moved or written)."""
        try:
            key: tuple | None = tuple((id(p), p.data_ptr(), p._version) for p in self.parameters())
        except RuntimeError:  # parameters made under torch.inference_mode keep no version: never reuse
            key = None
        cached = self.__dict__.get("_step_weights")
        if cached is None or key is None or cached[0] != key:
            cached = self.__dict__["_step_weights"] = (key, StepWeights(self))
        return cached[1]

    def stepper(self, hidden: Tensor) -> Stepper:
        """A one-token-at-a-time view of this model from the state `hidden` (L, N, H), for sampling."""
        return Stepper(self, hidden)

    def generate(
        self, idx: Tensor | list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
        top_p: float = 1.0, num_samples: int = 1, seed: int = 1337,
    ) -> Tensor:
        """Continue the token ids `idx` by `max_new_tokens` → (num_samples, max_new_tokens) new ids.

        The prompt is read once; each new token is one GRU step from the carried state.
        """
        prime = idx.flatten().tolist() if isinstance(idx, Tensor) else list(idx)
        return generate_tokens(
            self, prime, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            num_samples=num_samples, seed=seed, device=self.head.weight.device,
        )


class StepWeights:
    """A model's weights laid out for one-token steps; built once per parameter version (model.step_weights)."""

    def __init__(self, model: GRULanguageModel):
        spec = model.spec
        size = spec.hidden_size
        # Detached copies: no tensor here requires grad, so Stepper.step needs no grad-mode context
        # (entering and leaving one costs ~4 µs, 5% of a batch-1 step).
        self.layers: list[tuple[Tensor, ...]] = []  # per layer: (bias, w_ih^T, w_hh^T or w_rz^T, b_hh or w_n^T)
        self.head_w_t = model.head.weight.detach().float().t().contiguous()  # (H, V)
        self.head_b = model.head.bias.detach().float()
        self.derived: dict[Any, Tensor] = {}  # other layouts of these weights (generate/native.py's packing)
        if spec.layer_norm:  # per layer (b_ih, w_ih, w_hh, b_hh, g_ih, g_hh, g_hn), as regularize.cell_step takes them
            norms: Any = model.norms
            for layer, weights in enumerate(layer_weights(model.rnn)):
                gains = [g.detach().float() if g is not None else None for g in norms.layer(layer)]
                w_ih, w_hh, b_ih, b_hh = (t.detach().float() for t in weights)
                if layer == 0:  # (V, 3H): W_ih e for every token; LN and b_ih are applied per step
                    self.table = model.embedding.weight.detach().float() @ w_ih.t()
                self.layers.append((b_ih, w_ih, w_hh, b_hh, *gains))
            return
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(layer_weights(model.rnn)):
            w_ih, w_hh, b_ih, b_hh = (t.detach().float() for t in (w_ih, w_hh, b_ih, b_hh))
            bias, b_hn = fold_biases(b_ih, b_hh, spec.reset_after)
            if layer == 0:  # (V, 3H): the embedding's projection, looked up by token id
                self.table = torch.addmm(bias, model.embedding.weight.detach().float(), w_ih.t())
            w_ih_t = w_ih.t().contiguous() if layer > 0 else w_ih  # layer 0's is never multiplied
            if spec.reset_after:  # w_hh^T: (H, 3H), and [0, 0, b_hn] added to its product
                self.layers.append((bias, w_ih_t, w_hh.t().contiguous(), gate_bias(b_hn)))
            else:  # (H, 2H) and (H, H): r, z from h; the candidate from r ⊙ h
                self.layers.append((bias, w_ih_t, w_hh[: 2 * size].t().contiguous(), w_hh[2 * size :].t().contiguous()))


class Stepper:
    """Advance a model one token at a time from a carried state, for sampling.

    Equal to calling the model on one token at a time in eval mode, but without its per-call
    costs: weights are laid out once for a vector-matrix product (transposed, contiguous), biases
    are folded, layer 0's input projection becomes a row lookup (embedding @ W_ih^T precomputed
    for the whole vocabulary), and every step writes into buffers allocated here: per layer two
    products and five elementwise kernels, and no memory is allocated.
    """

    def __init__(self, model: GRULanguageModel, hidden: Tensor):
        """hidden: (L, N, H), the state after the prime; copied (the caller's tensor is not changed)."""
        spec = model.spec
        self.reset_after, self.hidden_size = spec.reset_after, spec.hidden_size
        # zoneout at sampling is its expectation, a rescaled update gate (generate/regularize.py);
        # layer-norm models step through regularize.cell_step here (native.c has its own layer norm).
        self.zoneout, self.layer_norm = spec.zoneout, spec.layer_norm
        size, batch = spec.hidden_size, hidden.shape[1]
        device = hidden.device
        self.weights = model.step_weights()
        self.table, self.layers = self.weights.table, self.weights.layers
        self.head_w_t, self.head_b = self.weights.head_w_t, self.weights.head_b
        self.hidden = hidden.detach().float().clone().contiguous()  # (L, N, H), updated in place every step
        self.gi = torch.empty(batch, 3 * size, device=device)  # input projections (+ folded biases)
        self.gh = torch.empty(batch, 3 * size, device=device)  # recurrent products
        self.rh = torch.empty(batch, size, device=device)  # r ⊙ h (seed form)
        self.logits = torch.empty(batch, spec.vocab_size, device=device)
        # Views made once, so the step itself builds none.
        g, h = self.gi, self.gh
        self.gi_rz, self.gi_r, self.gi_z, self.gi_n = g[:, : 2 * size], g[:, :size], g[:, size : 2 * size], g[:, 2 * size :]
        self.gh_rz, self.gh_r, self.gh_z, self.gh_n = h[:, : 2 * size], h[:, :size], h[:, size : 2 * size], h[:, 2 * size :]
        self.states = list(self.hidden.unbind(0))
        self.plan = list(zip(self.layers, self.states, strict=True))
        self.tanh = tanh_for(batch * size)  # batch 1: one tanh_ call beats recurrence.tanh_'s four

    def step(self, tokens: Tensor) -> Tensor:
        """tokens: (N,) int64 → logits (N, V) for the next token (a buffer overwritten by the next step)."""
        if self.layer_norm:
            return self._step_norm(tokens)
        gi, gh, tanh, keep = self.gi, self.gh, self.tanh, self.zoneout
        torch.index_select(self.table, 0, tokens, out=gi)  # layer 0's input projection
        x: Tensor | None = None
        for (bias, w_ih_t, w_a, w_b), h in self.plan:
            if x is not None:
                torch.addmm(bias, x, w_ih_t, out=gi)
            if self.reset_after:
                torch.addmm(w_b, h, w_a, out=gh)  # h W_hh^T + [0, 0, b_hn]
                self.gi_rz.add_(self.gh_rz).sigmoid_()  # r, z
                if keep:
                    self.gi_z.mul_(1 - keep).add_(keep)  # zoneout: z' = p + (1 − p) z
                tanh(self.gi_n.addcmul_(self.gi_r, self.gh_n))  # n = tanh(x_n + r ⊙ (W_hn h + b_hn))
                torch.lerp(self.gi_n, h, self.gi_z, out=h)  # n + z (h − n)
            else:
                torch.addmm(self.gi_rz, h, w_a, out=self.gh_rz).sigmoid_()  # r, z
                if keep:
                    self.gh_z.mul_(1 - keep)  # zoneout: z' = (1 − p) z
                torch.mul(self.gh_r, h, out=self.rh)  # reset before the product (seed form)
                tanh(torch.addmm(self.gi_n, self.rh, w_b, out=self.gh_n))  # h̃
                torch.lerp(h, self.gh_n, self.gh_z, out=h)  # h + z (h̃ − h)
            x = h
        return torch.addmm(self.head_b, x, self.head_w_t, out=self.logits)

    def _step_norm(self, tokens: Tensor) -> Tensor:
        """step() for a layer-normalized model: regularize.cell_step per layer (allocates; not the fast path)."""
        x: Tensor | None = None
        for (b_ih, w_ih, w_hh, b_hh, g_ih, g_hh, g_hn), h in zip(self.layers, self.states, strict=True):
            projection = self.table.index_select(0, tokens) if x is None else x @ w_ih.t()
            a = regularize.layer_norm(projection, g_ih) + b_ih
            h.copy_(regularize.cell_step(a, h, w_hh, b_hh, self.reset_after, self.zoneout, g_hh, g_hn))
            x = h
        return torch.addmm(self.head_b, x, self.head_w_t, out=self.logits)
