"""Token cache (fingerprinted), splits, and batches for truncated backpropagation through time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from generate.errors import UserError
from generate.sources import SPLITS, Corpus, get_source
from generate.storage import atomic_save
from generate.tokenizers import tokenizer_from_dict

CACHE_VERSION = 1  # bump when the cached format or any tokenization changes meaning


def load_corpus(cfg: Any, verbose: bool = True) -> Corpus:
    """Tokenize `cfg` (a DatasetConfig) or reload the cache made for the same source and settings."""
    fingerprint, build = get_source(cfg.source)
    key = fingerprint(cfg)
    cache = Path(cfg.cache_dir) / f"{cfg.name}-v{CACHE_VERSION}-{key[:20]}.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            corpus = Corpus(
                tokenizer_from_dict(saved["tokenizer"]),
                {split: [doc.tolist() for doc in docs] for split, docs in saved["splits"].items()},
                saved["stats"],
            )
            if verbose:
                print(f"dataset {cfg.name}: loaded token cache {cache}")
            return corpus
        except Exception as err:  # a damaged cache is rebuilt, never fatal
            print(f"dataset {cfg.name}: token cache {cache} unreadable ({type(err).__name__}); rebuilding")
    corpus = build(cfg)
    for split in SPLITS:
        corpus.splits.setdefault(split, [])
    atomic_save(
        {
            "tokenizer": corpus.tokenizer.to_dict(),
            # int32 halves the cache; ids are small non-negative integers.
            "splits": {s: [torch.tensor(d, dtype=torch.int32) for d in docs] for s, docs in corpus.splits.items()},
            "stats": corpus.stats,
        },
        cache,
    )
    if verbose:
        print(f"dataset {cfg.name}: tokenized and cached to {cache}")
    return corpus


IGNORE = -100  # target id that cross_entropy skips (padding after a document's end)


def join_documents(docs: list[list[int]], separator: int | None) -> Tensor:
    """Documents → one stream; each document is preceded by the separator when there is one."""
    stream: list[int] = []
    for doc in docs:
        if separator is not None:
            stream.append(separator)
        stream.extend(doc)
    return torch.tensor(stream, dtype=torch.long)


def training_stream(
    docs: list[list[int]], separator: int | None, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
) -> TokenStream | DocumentStream:
    """One long text → a TokenStream; a corpus of separate pieces (music) → a DocumentStream."""
    if len(docs) > 1 and separator is not None:
        return DocumentStream(docs, separator, batch_size, seq_len, seed, rank, world_size)
    return TokenStream(join_documents(docs, separator), batch_size, seq_len, seed, rank, world_size)


class TokenStream:
    """Contiguous training batches for truncated BPTT over one long stream (text).

    The stream is cut into `batch_size` rows read left to right, `seq_len` tokens per step, so row
    b of batch k+1 continues row b of batch k and the hidden state can be carried between steps.
    Each pass ("epoch") starts at a fresh offset in [0, seq_len) drawn from `seed`, so windows do
    not always start at the same places; the whole state is (epoch, position) and resumes exactly.
    """

    def __init__(
        self,
        tokens: Tensor,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        # Each rank takes its own contiguous share of the rows (the same row layout on every rank).
        rows = batch_size * world_size
        self.row_len = (len(tokens) - seq_len) // rows
        if self.row_len < seq_len + 1:
            need = rows * (seq_len + 1) + seq_len
            raise UserError(
                f"the training split has {len(tokens)} tokens, fewer than one training window needs "
                f"({need} for batch_size={batch_size} x seq_len={seq_len}); use more data or lower "
                "train.batch_size / train.seq_len"
            )
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._layout()

    def _layout(self) -> None:
        offset = int(torch.randint(self.seq_len, (1,), generator=torch.Generator().manual_seed(self.seed + self.epoch)))
        rows = self.batch_size * self.world_size
        grid = self.tokens[offset : offset + rows * self.row_len].view(rows, self.row_len)
        self.grid = grid[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]  # (B, row_len)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._layout()

    def next_batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """→ inputs (B, T), targets (B, T), reset (B,): rows whose hidden state starts afresh."""
        fresh = self.position == 0
        if self.position + self.seq_len + 1 > self.row_len:
            self.epoch, self.position, fresh = self.epoch + 1, 0, True
            self._layout()
        window = self.grid[:, self.position : self.position + self.seq_len + 1]
        self.position += self.seq_len
        return window[:, :-1], window[:, 1:], torch.full((self.batch_size,), fresh)


class DocumentStream:
    """Training batches over separate documents (music pieces), each read from a fresh state.

    Sampling and evaluation start a piece from a zero hidden state and the separator, so training
    does the same: each row reads one document (separator first) window by window, carrying the
    state between its windows; when the document ends the row's state is reset and it takes the
    next document. The last window of a document is padded with IGNORE targets. Documents are
    dealt to rows in a fresh shuffled order each pass, drawn from `seed`; under DDP each rank takes
    every world_size-th document of that order. The state is a few integers and resumes exactly.
    """

    def __init__(
        self,
        docs: list[list[int]],
        separator: int,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.seqs = [torch.tensor([separator, *doc], dtype=torch.long) for doc in docs if doc]
        if len(self.seqs) < world_size:
            raise UserError(
                f"the training split has {len(self.seqs)} piece(s), fewer than the {world_size} processes "
                "that would share them; use more data or fewer processes"
            )
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor = 0, 0
        self.rows = [[-1, 0] for _ in range(batch_size)]  # per row: [document index, next position]
        self._layout()

    def _layout(self) -> None:
        order = torch.randperm(len(self.seqs), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.order = order[self.rank :: self.world_size].tolist()

    def _next_document(self) -> int:
        if self.cursor >= len(self.order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._layout()
        self.cursor += 1
        return self.order[self.cursor - 1]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "rows": [list(row) for row in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.rows = [list(row) for row in state["rows"]]
        self._layout()

    def next_batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """→ inputs (B, T), targets (B, T) with IGNORE after a document's end, reset (B,)."""
        inputs = torch.zeros(self.batch_size, self.seq_len, dtype=torch.long)
        targets = torch.full((self.batch_size, self.seq_len), IGNORE, dtype=torch.long)
        reset = torch.zeros(self.batch_size, dtype=torch.bool)
        for b, row in enumerate(self.rows):
            if row[0] < 0 or row[1] + 1 >= len(self.seqs[row[0]]):  # no document, or it is used up
                row[0], row[1] = self._next_document(), 0
                reset[b] = True
            seq, pos = self.seqs[row[0]], row[1]
            window = seq[pos : pos + self.seq_len + 1]  # up to T inputs and their next tokens
            inputs[b, : len(window) - 1] = window[:-1]
            targets[b, : len(window) - 1] = window[1:]
            row[1] = pos + self.seq_len
        return inputs, targets, reset


def eval_batches(
    docs: list[list[int]], batch_size: int, seq_len: int, separator: int | None
) -> Iterator[list[tuple[Tensor, Tensor, Tensor, bool]]]:
    """Group documents into padded batches, each a list of (inputs, targets, mask, fresh) windows.

    Every document is scored from a fresh hidden state; its first token (the separator when the
    tokenizer has one) is context only. Longest documents go first so padding stays small.
    """
    seqs = [([separator] if separator is not None else []) + list(doc) for doc in docs]
    seqs = sorted((s for s in seqs if len(s) > 1), key=len, reverse=True)
    for start in range(0, len(seqs), batch_size):
        group = seqs[start : start + batch_size]
        longest = len(group[0])
        padded = torch.zeros(len(group), longest, dtype=torch.long)
        mask = torch.zeros(len(group), longest - 1, dtype=torch.bool)
        for row, seq in enumerate(group):
            padded[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq) - 1] = True
        windows = []
        for pos in range(0, longest - 1, seq_len):
            end = min(pos + seq_len, longest - 1)
            windows.append((padded[:, pos:end], padded[:, pos + 1 : end + 1], mask[:, pos:end], pos == 0))
        yield windows


def split_for_eval(doc_streams: list[list[int]], pieces: int) -> list[list[int]]:
    """A split that is one long stream (text) → `pieces` contiguous chunks, scored in parallel."""
    if len(doc_streams) != 1:
        return doc_streams
    stream = doc_streams[0]
    size = max(2, -(-len(stream) // pieces))
    return [stream[i : i + size] for i in range(0, len(stream), size)]
