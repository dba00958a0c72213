"""Token cache (fingerprinted), splits, and batches for truncated backpropagation through time."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from generate.errors import UserError
from generate.sources import SPLITS, Corpus, get_source
from generate.sources.store import DamagedStore, TokenSplit, load_store, publish, save_store
from generate.tokenizers import tokenizer_from_dict

CACHE_VERSION = 2  # bump when the cached format or any tokenization changes meaning


def load_corpus(cfg: Any, verbose: bool = True) -> Corpus:
    """Tokenize `cfg` (a DatasetConfig) or map the token store made for the same source and settings.

    The store is a folder of flat .npy arrays (see sources/store.py), built in a temporary folder and
    renamed into place whole, so a half-written store is never used; one that fails its checks on load
    (a split missing, lengths or ids that do not fit) is rebuilt.
    """
    fingerprint, build = get_source(cfg.source)
    key = fingerprint(cfg)
    cache = Path(cfg.cache_dir) / f"{cfg.name}-v{CACHE_VERSION}-{key[:20]}"
    if cache.is_dir():
        try:
            corpus = _mapped(cache)
            if verbose:
                print(f"dataset {cfg.name}: loaded token cache {cache}")
            return corpus
        except DamagedStore as err:  # a damaged cache is rebuilt, never fatal
            print(f"dataset {cfg.name}: token cache {cache} is damaged ({err}); rebuilding")
    cache.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        corpus = build(cfg, temporary)
        splits = {s: as_split(corpus.splits.get(s, [])) for s in SPLITS}
        corpus.tokenizer.learn(splits["train"])  # decoding hints kept with the vocabulary (events: the note-length cap)
        save_store(temporary, corpus.tokenizer.to_dict(), corpus.tokenizer.vocab_size, splits, corpus.stats)
        del corpus, splits  # unmap the temporary files before the folder moves
        publish(temporary, cache)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    if verbose:
        print(f"dataset {cfg.name}: tokenized and cached to {cache}")
    return _mapped(cache)


def _mapped(cache: Path) -> Corpus:
    meta, splits = load_store(cache, SPLITS)
    try:
        tokenizer = tokenizer_from_dict(meta["tokenizer"])
    except Exception as err:
        raise DamagedStore(f"its tokenizer does not load ({type(err).__name__})") from None
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise DamagedStore("its tokenizer does not match its vocabulary size")
    return Corpus(tokenizer, splits, meta["stats"])


def as_split(docs: TokenSplit | Sequence[Sequence[int]]) -> TokenSplit:
    """Documents as a TokenSplit (a list of token lists is copied into one flat array)."""
    return docs if isinstance(docs, TokenSplit) else TokenSplit.from_docs(docs)


IGNORE = -100  # target id that cross_entropy skips (padding after a document's end)
EVAL_SAMPLE_SEED = 0  # which documents a bounded evaluation scores: the same on every run and machine


def join_documents(docs: TokenSplit | Sequence[Sequence[int]], separator: int | None) -> np.ndarray:
    """Documents → one stream; each document is preceded by the separator when there is one.

    Without a separator this is the split's own flat array (a memmap stays a memmap: nothing is copied).
    """
    split = as_split(docs)
    if separator is None:
        return split.tokens
    at = split.offsets[:-1] + np.arange(len(split))  # where each separator goes
    stream = np.full(split.num_tokens + len(split), separator, dtype=np.int64)
    keep = np.ones(len(stream), dtype=bool)
    keep[at] = False
    stream[keep] = split.tokens
    return stream


def training_stream(
    docs: TokenSplit | Sequence[Sequence[int]], separator: int | None, batch_size: int, seq_len: int, seed: int,
    rank: int = 0, world_size: int = 1,
) -> TokenStream | DocumentStream:
    """One long text → a TokenStream; a corpus of separate pieces (music) → a DocumentStream."""
    if len(docs) > 1 and separator is not None:
        return DocumentStream(docs, separator, batch_size, seq_len, seed, rank, world_size)
    return TokenStream(join_documents(docs, separator), batch_size, seq_len, seed, rank, world_size)


def _long(array: np.ndarray) -> Tensor:
    """A (slice of a memmapped) token array → an int64 tensor of its own."""
    return torch.from_numpy(np.asarray(array, dtype=np.int64).copy())


class TokenStream:
    """Contiguous training batches for truncated BPTT over one long stream (text).

    The stream is cut into `batch_size` rows read left to right, `seq_len` tokens per step, so row
    b of batch k+1 continues row b of batch k and the hidden state can be carried between steps.
    Each pass ("epoch") starts at a fresh offset in [0, seq_len) drawn from `seed`, so windows do
    not always start at the same places; the whole state is (epoch, position) and resumes exactly.
    The rows are views of the (memory-mapped) token array: a batch copies only its own windows.
    """

    def __init__(
        self,
        tokens: np.ndarray | Tensor,
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
        self.tokens = tokens.numpy() if isinstance(tokens, Tensor) else tokens
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._layout()

    def _layout(self) -> None:
        offset = int(torch.randint(self.seq_len, (1,), generator=torch.Generator().manual_seed(self.seed + self.epoch)))
        rows = self.batch_size * self.world_size
        grid = self.tokens[offset : offset + rows * self.row_len].reshape(rows, self.row_len)
        self.grid = grid[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]  # (B, row_len), a view

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
        window = _long(self.grid[:, self.position : self.position + self.seq_len + 1])
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
    Windows are sliced from the split's flat (memory-mapped) array; no document is held as a list.
    """

    def __init__(
        self,
        docs: TokenSplit | Sequence[Sequence[int]],
        separator: int,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        split = as_split(docs)
        kept = np.flatnonzero(split.lengths > 0)  # empty documents give nothing to learn
        self.tokens, self.separator = split.tokens, separator
        self.starts = split.offsets[:-1][kept]
        self.sizes = split.lengths[kept] + 1  # the separator first
        if len(kept) < world_size:
            raise UserError(
                f"the training split has {len(kept)} piece(s), fewer than the {world_size} processes "
                "that would share them; use more data or fewer processes"
            )
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.cursor = 0, 0
        self.rows = [[-1, 0] for _ in range(batch_size)]  # per row: [document index, next position]
        self._layout()

    def _layout(self) -> None:
        order = torch.randperm(len(self.sizes), generator=torch.Generator().manual_seed(self.seed + self.epoch))
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
            if row[0] < 0 or row[1] + 1 >= self.sizes[row[0]]:  # no document, or it is used up
                row[0], row[1] = self._next_document(), 0
                reset[b] = True
            d, pos = row[0], row[1]
            window = _long(with_separator(self.tokens, int(self.starts[d]), int(self.sizes[d]), self.separator,
                                          pos, pos + self.seq_len + 1))  # up to T inputs and their next tokens
            inputs[b, : len(window) - 1] = window[:-1]
            targets[b, : len(window) - 1] = window[1:]
            row[1] = pos + self.seq_len
        return inputs, targets, reset


def with_separator(tokens: np.ndarray, start: int, size: int, separator: int | None, lo: int, hi: int) -> np.ndarray:
    """Items lo..hi of `[separator, *tokens[start : start + size - 1]]` (no separator: of the tokens alone)."""
    hi = min(hi, size)
    if separator is None:
        return tokens[start + lo : start + hi]
    if lo > 0:
        return tokens[start + lo - 1 : start + hi - 1]
    return np.concatenate((np.array([separator], dtype=np.int64), tokens[start : start + hi - 1]))


def eval_batches(
    docs: Sequence[Sequence[int]], batch_size: int, seq_len: int, separator: int | None
) -> Iterator[Iterator[tuple[Tensor, Tensor, Tensor, bool]]]:
    """Group documents into padded batches, each an iterator of (inputs, targets, mask, fresh) windows.

    Every document is scored from a fresh hidden state; its first token (the separator when the
    tokenizer has one) is context only. Longest documents go first so padding stays small. Windows
    are cut from the documents (numpy views of the store) one at a time: memory is one window, not one split.
    """
    seqs = [docs[i] for i in eval_order(docs, separator)]
    for start in range(0, len(seqs), batch_size):
        yield _windows(seqs[start : start + batch_size], seq_len, separator)


def eval_order(docs: Sequence[Sequence[int]], separator: int | None) -> list[int]:
    """The indices of the documents eval_batches scores, in the order it scores them: longest first (stable)."""
    extra = 0 if separator is None else 1
    return sorted((i for i, d in enumerate(docs) if len(d) + extra > 1), key=lambda i: len(docs[i]), reverse=True)


def _windows(group: Sequence[Any], seq_len: int, separator: int | None) -> Iterator[tuple[Tensor, Tensor, Tensor, bool]]:
    extra = 0 if separator is None else 1
    arrays = [np.asarray(doc) for doc in group]
    longest = len(arrays[0]) + extra
    for pos in range(0, longest - 1, seq_len):
        end = min(pos + seq_len, longest - 1)
        padded = torch.zeros(len(arrays), end + 1 - pos, dtype=torch.long)
        mask = torch.zeros(len(arrays), end - pos, dtype=torch.bool)
        for row, doc in enumerate(arrays):
            part = _long(with_separator(doc, 0, len(doc) + extra, separator, pos, end + 1))
            padded[row, : len(part)] = part
            mask[row, : max(len(part) - 1, 0)] = True
        yield padded[:, :-1], padded[:, 1:], mask, pos == 0


def split_for_eval(docs: Sequence[Any], pieces: int, max_tokens: int = 0) -> list[Any]:
    """What an evaluation scores: every document, or with `max_tokens` > 0 a fixed sample of about that many tokens.

    A split that is one long stream (text) is cut into `pieces` contiguous chunks scored in parallel;
    when bounded, the chunks are `max_tokens / pieces` long and spread evenly over the whole stream.
    Documents (music) are bounded by taking them in a fixed pseudo-random order (EVAL_SAMPLE_SEED)
    until `max_tokens` is reached, so every evaluation of a run scores the same ones.
    """
    if len(docs) != 1:
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        if max_tokens <= 0 or lengths.sum() <= max_tokens:
            return list(docs)
        order = np.random.default_rng(EVAL_SAMPLE_SEED).permutation(len(docs))
        take = order[: int(np.searchsorted(np.cumsum(lengths[order]), max_tokens)) + 1]
        return [docs[i] for i in sorted(take.tolist())]
    stream = docs[0]
    n = len(stream)
    if 0 < max_tokens < n:
        size = max(2, max_tokens // pieces)
        starts = np.linspace(0, n - size, num=max(1, min(pieces, n // size))).astype(np.int64)
        return [stream[s : s + size] for s in starts.tolist()]
    size = max(2, -(-n // pieces))
    return [stream[i : i + size] for i in range(0, n, size)]
