"""Scoring: summed cross-entropy in nats and bits per token (and per time step for polyphonic music)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from generate.data import eval_batches, eval_order, split_for_eval
from generate.errors import UserError
from generate.tokenizers import Tokenizer

BAR_TOKENS = 1 << 20  # a split this big takes long enough on a CPU to deserve a progress bar


@dataclass
class EvalResult:
    nll: float  # summed over scored tokens, nats
    tokens: int
    time_steps: int = 0  # for tokenizers with a notion of time steps (polyphonic music)
    # Polyphonic music only (see FrameSums): each piece's first time step, and the canonical-order figure.
    first_frame_nll: float = 0.0  # nats of the tokens up to and including each piece's first STEP
    first_frame_tokens: int = 0
    first_frames: int = 0  # pieces whose first step was scored (one time step each)
    nll_canonical: float | None = None  # renormalized over the tokens canonical order allows (None: not computed)
    first_frame_nll_canonical: float = 0.0
    transpositions: int = 0  # K > 0: every figure is the Mixture's, 2K + 1 views of each model
    models: int = 1  # > 1: every figure is the Mixture's, of an ensemble of this many models
    pitch_orders: int = 1  # > 1: an ensemble over pitch orders, mixed frame by frame (mix_frames)
    # With keep_frames: per scored document (in the order given), its NLL per time step, (frames, 2) float64 of
    # exact and canonical nats (canonical 0 when not computed); tokens after a document's last STEP are one more row.
    frame_nll: list[np.ndarray] | None = None

    @property
    def nats_per_token(self) -> float:
        return self.nll / max(self.tokens, 1)

    @property
    def bits_per_token(self) -> float:
        return self.nats_per_token / math.log(2)

    @property
    def nll_per_time_step(self) -> float | None:
        return self.nll / self.time_steps if self.time_steps else None

    @property
    def nll_per_time_step_after_first(self) -> float | None:
        """Bai et al. 2018's convention: each piece's first time step left out of the sum and of the count."""
        steps = self.time_steps - self.first_frames
        return (self.nll - self.first_frame_nll) / steps if self.first_frames and steps > 0 else None

    @property
    def canonical_nll_per_time_step(self) -> float | None:
        return self.nll_canonical / self.time_steps if self.time_steps and self.nll_canonical is not None else None

    @property
    def canonical_nll_per_time_step_after_first(self) -> float | None:
        steps = self.time_steps - self.first_frames
        if self.nll_canonical is None or not self.first_frames or steps <= 0:
            return None
        return (self.nll_canonical - self.first_frame_nll_canonical) / steps

    def frame_table(self, has_order: bool) -> str:
        """The four NLL-per-time-step figures, labelled (README, Evaluate, says which is which)."""
        def row(label: str, whole: float | None, rest: float | None) -> str:
            cells = ["-" if value is None else f"{value:.4f}" for value in (whole, rest)]
            return f"  {label:<24}{cells[0]:>20}{cells[1]:>36}"

        kept = self.time_steps - self.first_frames
        lines = [
            f"{'NLL per time step (nats)':<26}{f'all {self.time_steps:,} steps':>20}"
            f"{f'first step excluded ({kept:,} steps)':>36}",
            row("exact", self.nll_per_time_step, self.nll_per_time_step_after_first),
            row("canonical-renormalized", self.canonical_nll_per_time_step,
                self.canonical_nll_per_time_step_after_first),
        ]
        if self.nll_canonical is None:
            lines.append("  (canonical-renormalized: " + ("skipped, canonical=false)" if has_order else
                         "this model's metre or control tokens have no canonical order)"))
        return "\n".join(lines)


def canonical_allowed(low: torch.Tensor, high: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """(B, T, V) mask of the ids canonical order allows next: STEP, or an id in [low, high) (the tokenizer's rule)."""
    ids = torch.arange(vocab_size, device=low.device)
    return (ids == step) | ((ids >= low[..., None]) & (ids < high[..., None]))


class FrameSums:
    """The per-time-step figures of polyphonic music, summed window by window over one batch of pieces.

    First frame: the targets up to and including a piece's first STEP (Bai et al. 2018 leave that step out).
    Canonical: at each position the softmax is renormalized over the tokens that may come next in canonical
    order (the tokenizer's canonical_bounds: STEP or a pitch on the far side of the step's last; never SEP, as
    the figure conditions on the piece going on, like the papers' fixed-length sequences). That is a proper
    distribution over frames, so its NLL is exact; the plain NLL also pays for the mass the model puts on
    orders that never occur, so it is an upper bound, and canonical <= plain at every position.
    With `keep_frames`, also each row's NLL frame by frame (for mix_frames).
    """

    def __init__(self, tokenizer: Any, canonical: bool, rows: int, keep_frames: bool = False) -> None:
        self.tokenizer, self.canonical, self.keep_frames = tokenizer, canonical, keep_frames
        self.seen_step = torch.zeros(rows, dtype=torch.bool)  # a row's first STEP has been scored
        self.steps = torch.zeros(rows, dtype=torch.long)  # STEPs scored so far per row: the frame a position is in
        self.carry = None  # canonical_bounds's state between windows
        self.sums = torch.zeros(3, dtype=torch.float64)  # first-frame nll, canonical nll, first-frame canonical nll
        self.first_tokens = self.first_frames = 0
        self.kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (frame, nats (B, T, 2), mask)

    def add(self, logits: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
            losses: torch.Tensor) -> None:
        """One window: (B, T, V) float logits; CPU (B, T) inputs, targets, mask; (B, T) exact losses, on device."""
        is_step = (targets == self.tokenizer.STEP) & mask
        steps_before = torch.cumsum(is_step, 1) - is_step.long() + self.seen_step[:, None].long()
        first = (steps_before == 0) & mask
        self.seen_step |= is_step.any(1)
        self.first_frames += int((is_step & first).sum())
        self.first_tokens += int(first.sum())
        frame = torch.cumsum(is_step, 1) - is_step.long() + self.steps[:, None]
        self.steps += is_step.sum(1)
        first = first.to(losses.device)
        sums = [(losses * first).sum(dtype=torch.float64)]
        canonical = torch.zeros_like(losses)
        if self.canonical:
            low, high, self.carry = self.tokenizer.canonical_bounds(inputs.numpy(), self.carry)
            low, high = torch.from_numpy(low).to(logits.device), torch.from_numpy(high).to(logits.device)
            allowed = canonical_allowed(low, high, self.tokenizer.STEP, logits.shape[-1])
            log_z = torch.logsumexp(logits.masked_fill(~allowed, -math.inf), -1)  # the renormalizer over allowed ids
            target_logits = logits.gather(-1, targets.to(logits.device)[..., None])[..., 0]
            canonical = torch.where(mask.to(logits.device), log_z - target_logits, 0.0)
            sums += [canonical.sum(dtype=torch.float64), (canonical * first).sum(dtype=torch.float64)]
        self.sums[: len(sums)] += torch.stack(sums).cpu()
        if self.keep_frames:
            self.kept.append((frame, torch.stack([losses, canonical], -1).double().cpu(), mask))

    def into(self, result: EvalResult) -> None:
        result.first_frame_nll += float(self.sums[0])
        result.first_frame_tokens += self.first_tokens
        result.first_frames += self.first_frames
        if self.canonical:
            result.nll_canonical = (result.nll_canonical or 0.0) + float(self.sums[1])
            result.first_frame_nll_canonical += float(self.sums[2])
        if self.keep_frames:  # each row's windows, frame by frame
            frame, nats, mask = (torch.cat(parts, 1) for parts in zip(*self.kept, strict=True))
            for row in range(len(frame)):
                index, values = frame[row][mask[row]].numpy(), nats[row][mask[row]].numpy()
                per_frame = np.zeros((int(index.max(initial=-1)) + 1, 2))
                np.add.at(per_frame, index, values)
                result.frame_nll = result.frame_nll if result.frame_nll is not None else []
                result.frame_nll.append(per_frame)


class Mixture(torch.nn.Module):
    """Models scored as the equal mixture of their views: each model read as is or, with K > 0, transposed.

    View k of a model reads the piece moved by k semitones (-K <= k <= K) and gives each next token the probability
    the model gives that token moved by k: zero when it would leave the pitch range, where the view also reads an
    input pitch unmoved (test-time transposition). Every model gets 2K + 1 views and every view the same weight, so
    several models (an ensemble of checkpoints with one tokenizer) count equally. The mixture's next-token
    distribution is the mean of the views', a function of the past alone, so the NLL of the whole is exact
    (cross-entropy renormalizes the mass the views lose off the range); its figures are labelled as a mixture's.
    forward returns log-probabilities in place of logits; the hidden state is a tuple with one entry per model, its
    views stacked along the batch (L, (2K + 1) B, H).
    """

    def __init__(self, nets: list[torch.nn.Module], tokenizer: Any, semitones: int = 0) -> None:
        super().__init__()
        if semitones and not hasattr(tokenizer, "transposition_ids"):  # text
            raise UserError(f"transpositions= is for music models; this one has {tokenizer.kind} tokens")
        self.nets = torch.nn.ModuleList(nets)
        device = next(nets[0].parameters()).device
        moved = torch.from_numpy(np.stack([tokenizer.transposition_ids(k) for k in range(-semitones, semitones + 1)])
                                 if semitones else np.arange(tokenizer.vocab_size)[None])
        self.lost = (moved < 0).to(device)  # (views, V): the ids each view cannot give
        self.reads = torch.where(moved < 0, torch.arange(moved.shape[1]), moved).to(device)  # (views, V): id → id read
        self.gives = moved.clamp(min=0).to(device)  # (views, V): id → the id whose probability it gives

    def forward(self, tokens: torch.Tensor, hidden: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        views, (batch, steps) = len(self.reads), tokens.shape
        index = self.gives[:, None, None, :].expand(-1, batch, steps, -1)
        read = self.reads[:, tokens].reshape(views * batch, steps)  # every view's input, the same for every model
        per_view, states = [], []
        for net, state in zip(self.nets, hidden or [None] * len(self.nets), strict=True):
            logits, state = net(read, state)
            log_p = torch.log_softmax(logits.float(), -1).view(views, batch, steps, -1)
            per_view.append(log_p.gather(-1, index).masked_fill(self.lost[:, None, None, :], -math.inf))
            states.append(state)
        every = torch.cat(per_view)  # (models × views, B, T, V)
        return torch.logsumexp(every, 0) - math.log(len(every)), tuple(states)


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    docs: list[list[int]],
    separator: int | None,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    autocast: Any = None,
    progress: str = "",
    frames: Any = None,
    canonical: bool = False,
    keep_frames: bool = False,
) -> EvalResult:
    """Sum the cross-entropy over every token of `docs` (each from a fresh hidden state); a bar when `progress` names one.

    With `frames` (a polyphonic tokenizer) also each piece's first-time-step share and, with `canonical`, the
    canonical-order NLL (FrameSums); with `keep_frames` too each document's NLL frame by frame, in the order
    eval_batches scores them (data.eval_order).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    scored_total = sum(len(d) for d in docs) - (len(docs) if separator is None else 0)  # the first token is context
    bar = tqdm(total=scored_total, desc=progress, unit="tok", unit_scale=True, disable=not progress,
               dynamic_ncols=True)
    result = EvalResult(0.0, 0)
    for windows in eval_batches(docs, batch_size, seq_len, separator):
        hidden, sums = None, None
        for inputs, targets, mask, _ in windows:
            inputs_d, targets_d = inputs.to(device), targets.to(device)
            with autocast or nullcontext():
                logits, hidden = model(inputs_d, hidden)  # (B, T, V)
            logits = logits.float()
            losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets_d.flatten(), reduction="none")
            losses = losses.view_as(targets_d) * mask.to(device)
            total += losses.sum(dtype=torch.float64)
            if frames is not None:
                sums = sums or FrameSums(frames, canonical, len(inputs), keep_frames)
                sums.add(logits, inputs, targets, mask, losses)
            scored = int(mask.sum())
            count += scored
            bar.update(scored)
        if sums is not None:
            sums.into(result)
    bar.close()
    model.train(was_training)
    result.nll, result.tokens = float(total), count
    return result


def score_documents(
    model: torch.nn.Module, tokenizer: Tokenizer, docs: list[list[int]], batch_size: int = 64, seq_len: int = 256,
    device: torch.device | str = "cpu", max_tokens: int = 0, canonical: bool | None = None, transpositions: int = 0,
    ensemble: list[torch.nn.Module] | None = None, keep_frames: bool = False,
) -> EvalResult:
    """Score whole documents of one split (a text stream is cut into `batch_size` chunks scored in parallel).

    `max_tokens` > 0 scores a fixed sample of about that many tokens (split_for_eval). Polyphonic music also gets
    the first-frame-excluded and canonical-order figures; `canonical` None: when the tokenizer has canonical order.
    `transpositions` K > 0 scores the Mixture of the model's views -K..K semitones away, with batch_size / (2K + 1)
    documents at once, so each forward call still runs about batch_size rows. `ensemble`: more models with the same
    tokens, mixed in with equal weight (each with its 2K + 1 views). `keep_frames` (polyphonic): also each document's
    NLL frame by frame (EvalResult.frame_nll, in the order of the documents scored), what mix_frames mixes.
    """
    models = [model, *(ensemble or [])]
    if transpositions or len(models) > 1:
        model = Mixture(models, tokenizer, transpositions)
    chunks = split_for_eval(docs, batch_size, max_tokens)
    if not chunks:
        raise UserError("there is nothing to score: the split is empty")
    frames = tokenizer if hasattr(tokenizer, "canonical_bounds") else None  # polyphonic: steps end with STEP
    order = bool(getattr(tokenizer, "canonical_order", False))
    if canonical and not order:
        if frames is None:
            raise UserError(f"canonical=true is for polyphonic models; this one has {tokenizer.kind} tokens")
        frames.canonical_bounds(np.zeros((1, 1), dtype=np.int64))  # raises the UserError that says why
    total = sum(len(c) for c in chunks)
    rows = max(1, batch_size // (2 * transpositions + 1))  # documents per call: the same sample, whatever K
    result = evaluate_loss(model, chunks, tokenizer.separator_id(), rows, seq_len, torch.device(device),
                           progress="scoring" if total >= BAR_TOKENS else "", frames=frames,
                           canonical=order if canonical is None else canonical, keep_frames=keep_frames)
    if keep_frames:  # back from the order eval_batches scored them in to the documents' own
        scored = dict(zip(eval_order(chunks, tokenizer.separator_id()), result.frame_nll or [], strict=True))
        result.frame_nll = [scored.get(i, np.zeros((0, 2))) for i in range(len(chunks))]
    count_steps = getattr(tokenizer, "count_time_steps", None)  # only tokenizers with time steps have it
    if count_steps is not None:
        result.time_steps = sum(count_steps(chunk) for chunk in chunks)  # what was scored (all of it, unbounded)
    result.transpositions, result.models = transpositions, len(models)
    return result


def mix_frames(results: list[EvalResult]) -> EvalResult:
    """Polyphonic scores of the same pieces (each with keep_frames), mixed frame by frame with weight per model.

    Each result (one pitch order's model, or its models mixed token by token) is a proper distribution over the
    next frame given the frames before it, whatever order it reads a frame's pitches in (PolyphonicTokenizer.
    pitch_order), so the mean of those distributions, each weighted by the models it stands for, is one too: its
    NLL per time step is exact, and so is its canonical figure (the mean of the canonical distributions). The
    pieces, frames and token counts must be the same in every result (Model.evaluate checks the pieces).
    """
    weights = np.array([r.models for r in results], dtype=np.float64)
    log_w = np.log(weights / weights.sum())[:, None]
    first = results[0]
    canonical = all(r.nll_canonical is not None for r in results)
    nll = [0.0, 0.0, 0.0, 0.0]  # exact, canonical, and both for each piece's first frame
    for docs in zip(*(r.frame_nll or [] for r in results), strict=True):
        if len({len(d) for d in docs}) > 1:
            raise UserError("these models' pieces have different numbers of time steps: mix models of one dataset")
        if not len(docs[0]):
            continue
        for column in (0, 1):
            mixed = -np.logaddexp.reduce(log_w - np.stack([d[:, column] for d in docs]), axis=0)
            nll[column] += float(mixed.sum())
            nll[2 + column] += float(mixed[0])
    return EvalResult(
        nll[0], first.tokens, first.time_steps, nll[2], first.first_frame_tokens, first.first_frames,
        nll[1] if canonical else None, nll[3] if canonical else 0.0, first.transpositions, int(weights.sum()),
        pitch_orders=len(results),
    )
