"""The public Python API: load a model, sample and score with it, tokenize a dataset, train a model."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from generate.checkpoint import build_model, build_tokenizer, load_checkpoint, resolve_checkpoint
from generate.config import (
    CONFIG_DIR,
    DatasetConfig,
    ModelConfig,
    TrainConfig,
    TrainRunConfig,
    dataset_from_checkpoint,
    to_object,
    with_settings,
)
from generate.data import load_corpus
from generate.decoding import beam_search, check_sampling, generate_tokens, stream_tokens
from generate.errors import UserError
from generate.music.notes import Piece
from generate.paths import home
from generate.ranges import EVALUATE, MAX_MUSIC_TOKENS, check
from generate.runtime import resolve_device
from generate.samples import MusicSample, TextSample
from generate.scoring import EvalResult, mix_frames, score_documents
from generate.sources import SPLITS, Corpus
from generate.tokenizers import MusicTokenizer, Tokenizer
from generate.trainer import RunSummary, train_run


class Model:
    """A trained GRU language model and its tokenizer, rebuilt from a checkpoint (data only)."""

    def __init__(self, checkpoint: dict[str, Any], path: Path, device: torch.device | str = "cpu", origin: str = "given"):
        self.path, self.checkpoint, self.origin = path, checkpoint, origin
        self.device = resolve_device(device)
        self.net = build_model(checkpoint, self.device)
        self.tokenizer: Tokenizer = build_tokenizer(checkpoint)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, device: str = "cpu") -> Model:
        """A shipped model by name (shakespeare, bach, jsb, ...), a checkpoint path, or None for the default."""
        path, origin = resolve_checkpoint(name_or_path)
        return cls(load_checkpoint(path), path, device, origin)

    @property
    def is_music(self) -> bool:
        return isinstance(self.tokenizer, MusicTokenizer)

    def card(self) -> dict[str, Any]:
        """What this model is (dataset, tokenizer, size, steps, val loss), over the checkpoint's stored card if any."""
        config = self.checkpoint.get("config", {})
        stored = self.checkpoint.get("card")
        return {**(stored if isinstance(stored, dict) else {}),
            "path": str(self.path),
            "dataset": str(dataset.get("name", "?")) if isinstance(dataset := config.get("dataset"), dict) else "?",
            "tokenizer": self.tokenizer.kind,
            "parameters": self.net.num_parameters(),
            "layers": self.net.spec.num_layers,
            "hidden_size": self.net.spec.hidden_size,
            "steps": self.checkpoint.get("step"),
            "val_loss": self.checkpoint.get("val_loss"),
        }

    def prime(self, prompt: str = "", primer: str | Path | None = None, meter: str | None = None,
              key: str | None = None) -> tuple[list[int], bool]:
        """The ids generation starts from, and whether they belong in the output."""
        ids, keep, _ = self.start(prompt, primer, meter, key)
        return ids, keep

    def start(self, prompt: str = "", primer: str | Path | None = None, meter: str | None = None,
              key: str | None = None) -> tuple[list[int], bool, int]:
        """prime() and the semitones the output must move by (back to the primer's or the asked key)."""
        if prompt and primer:
            raise UserError("prompt= and primer= cannot be used together; give one of them")
        if (meter is not None or key is not None) and not isinstance(self.tokenizer, MusicTokenizer):
            raise UserError("meter= and key= are for music models with control tokens; this is a text model")
        if primer:
            if not isinstance(self.tokenizer, MusicTokenizer):
                raise UserError("primer= is a MIDI file for music models; this is a text model, use prompt=\"...\"")
            if meter is not None or key is not None:
                raise UserError("primer= keeps the primer's own metre and key; give primer= or meter=/key=, not both")
            ids, shift = self.tokenizer.primer_ids(primer, to_c=self.transposed_to_c)
            return ids, True, -shift  # the output goes back to the primer's key
        if prompt:
            if self.is_music:
                raise UserError("prompt= is text for text models; for a music model give primer=FILE.mid")
            return self.tokenizer.encode(prompt), True, 0
        if isinstance(self.tokenizer, MusicTokenizer) and (meter is not None or key is not None):
            from generate.music.extract import shift_to_c
            from generate.tokenizers.metre import parse_key

            asked = parse_key(key) if key is not None else None
            shift = shift_to_c(asked) if self.transposed_to_c else 0  # trained in C/Am: condition there, move back
            model_key = asked.transposed(shift) if asked is not None else None
            return [self.tokenizer.SEP, *self.tokenizer.control_ids(meter, model_key)], True, -shift
        return self.tokenizer.start_ids(), False, 0

    @property
    def transposed_to_c(self) -> bool:
        """Whether the training pieces were all moved to C major / A minor (dataset.transpose=c)."""
        dataset = self.checkpoint.get("config", {}).get("dataset", {})
        return isinstance(dataset, dict) and str(dataset.get("transpose", "none")).split(".")[-1] == "c"

    def sample(
        self, prompt: str = "", *, primer: str | Path | None = None, temperature: float = 1.0, top_k: int = 0,
        top_p: float = 1.0, length: int = 200, num_samples: int = 1, seed: int | None = None, beam_size: int = 1,
        qpm: float | None = None, meter: str | None = None, key: str | None = None,
    ) -> list[TextSample] | list[MusicSample]:
        """Generate `num_samples` continuations of `prompt` (text) or `primer` (a MIDI or score file, music).

        `meter` ("6/8") and `key` ("Dm") start music from those control tokens (models trained with
        dataset.controls=true); without them the model chooses. A primer is moved into the training key when
        the dataset was (dataset.transpose=c) and the output moved back to the primer's key.
        `qpm=None` writes music at the tempo the model chose (its TEMPO control), else 120.
        `seed=None` draws a fresh seed; the same seed and settings give the same samples.
        """
        check_sampling(temperature, top_k, top_p, length, num_samples, beam_size)
        self.check_music_length(length)
        seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
        prime, keep, shift = self.start(prompt, primer, meter, key)
        settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "num_samples": num_samples,
                    "seed": seed, "device": self.device}
        rows = self.generate_rows(prime, keep, length, settings, beam_size=beam_size,
                                  metre_first=key is not None and meter is None and not primer)
        samples = self.decode(rows, qpm)
        if shift:
            for sample in samples:
                sample.piece = sample.piece.transposed(shift)
        return samples

    def generate_rows(self, prime: list[int], keep: bool, length: int, settings: dict[str, Any], *,
                      beam_size: int = 1, metre_first: bool = False) -> list[list[int]]:
        """`length` tokens after `prime` per sample (the prime in front when `keep`): beam search when
        beam_size > 1; with `metre_first` (key= without meter=) the model draws each sample's METER first."""
        if beam_size > 1:
            found = beam_search(self.net, prime, length, beam_size, **settings).tolist()
        elif metre_first:
            return self._metre_first_rows(prime, length, settings)
        else:
            found = generate_tokens(self.net, prime, length, **settings).tolist()
        return [(prime if keep else []) + row for row in found]

    def _metre_first_rows(self, prime: list[int], length: int, settings: dict[str, Any]) -> list[list[int]]:
        """key= without meter=: each sample's METER is drawn first (it comes before KEY), then it continues."""
        sep, key_id = prime[0], prime[-1]
        firsts = generate_tokens(self.net, [sep], 1, **settings)[:, 0].tolist()
        rows: list[list[int]] = [[] for _ in firsts]
        for first in sorted(set(firsts)):
            chosen = [i for i, f in enumerate(firsts) if f == first]
            start = [sep, first, key_id]
            more = generate_tokens(self.net, start, max(1, length - 1),
                                   **{**settings, "num_samples": len(chosen), "seed": settings["seed"] + first})
            for i, row in zip(chosen, more.tolist(), strict=True):
                rows[i] = start + row
        return rows

    def check_music_length(self, length: int) -> None:
        """A music sample is decoded and rendered as one piece, so its length is capped (text streams instead)."""
        if self.is_music and length > MAX_MUSIC_TOKENS:
            raise UserError(f"length={length} is too long for a music sample: at most {MAX_MUSIC_TOKENS:,} tokens")

    def stream(
        self, prompt: str = "", *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, length: int = 200,
        seed: int | None = None, block: int = 8,
    ) -> Iterator[str]:
        """Text models: one sample's text piece by piece as it is generated (the prompt first), `block` tokens a piece.

        The same seed and settings give exactly the text `sample` gives.
        """
        for pieces in self.stream_samples(prompt, temperature=temperature, top_k=top_k, top_p=top_p, length=length,
                                          seed=seed, block=block):
            yield pieces[0]

    def stream_samples(
        self, prompt: str = "", *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, length: int = 200,
        num_samples: int = 1, seed: int | None = None, block: int = 8,
    ) -> Iterator[list[str]]:
        """Text models: the next piece of each of `num_samples` samples, `block` tokens at a time (the prompt first).

        Memory stays O(num_samples × (block + vocabulary)) however long the samples are.
        """
        if self.is_music:
            raise UserError("stream() is for text models; a music model's sample is a piece: use sample()")
        check_sampling(temperature, top_k, top_p, length, num_samples)
        seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
        prime, keep = self.prime(prompt)
        if keep:
            yield [self.tokenizer.decode(prime)] * num_samples
        for ids in stream_tokens(self.net, prime, length, temperature=temperature, top_k=top_k, top_p=top_p,
                                 num_samples=num_samples, seed=seed, device=self.device, block=block):
            yield [self.tokenizer.decode(row) for row in ids.tolist()]

    def decode(self, rows: list[list[int]], qpm: float | None = None) -> list[TextSample] | list[MusicSample]:
        """Token rows → samples. Music is written at `qpm` when given, else at the tempo the piece carries
        (its TEMPO control), else at 120."""
        if isinstance(self.tokenizer, MusicTokenizer):
            hints = self.tokenizer.render_hints()
            pieces = [self.tokenizer.decode(ids) for ids in rows]
            if qpm is not None:  # the caller's tempo wins over the model's
                for piece in pieces:
                    piece.qpm = float(qpm)
            return [MusicSample(piece, hints, 120.0 if qpm is None else qpm) for piece in pieces]
        return [TextSample(self.tokenizer.decode(ids)) for ids in rows]

    def score(self, item: str | Piece) -> EvalResult:
        """The model's loss on one text or piece, read from a fresh state (nats and bits per token)."""
        ids = self.tokenizer.encode(item)
        return score_documents(self.net, self.tokenizer, [ids], batch_size=1, device=self.device)

    def dataset(self, dataset_path: str | None = None, cache_dir: str | None = None) -> Corpus:
        """The dataset this model was trained on, tokenized (from the cache when it is there).

        The token cache goes to `cache_dir` (default: $GENERATE_HOME/cache, else ./cache), never where the
        checkpoint says.
        """
        config = self.checkpoint.get("config")
        if not isinstance(config, dict) or "dataset" not in config:
            raise UserError(f"{self.path} does not record the dataset it was trained on; it cannot be evaluated")
        settings = dataset_from_checkpoint(config["dataset"], cache_dir)
        if dataset_path:
            settings.path = dataset_path
        corpus = load_corpus(settings)
        # What learn() takes from the data (e.g. the events cap) may be absent from an older checkpoint.
        if corpus.tokenizer.definition() != self.tokenizer.definition():
            raise UserError(
                f"the dataset at {settings.path} no longer tokenizes the way this checkpoint was trained; "
                "evaluate on the data it was trained on (dataset_path=...)"
            )
        return corpus

    def evaluate(
        self, split: str = "test", *, batch_size: int = 64, seq_len: int = 256, dataset_path: str | None = None,
        cache_dir: str | None = None, max_tokens: int = 0, canonical: bool | None = None, transpositions: int = 0,
        ensemble: Sequence[Model | str | Path] = (),
    ) -> EvalResult:
        """The loss on a split of the model's own dataset (every token, each document from a fresh state).

        `max_tokens` > 0: a fixed sample of about that many tokens. Polyphonic models also get the first-step-excluded
        and canonical-order figures (`canonical` None: when the tokenizer has the order; False: skipped); see EvalResult.
        `transpositions` K > 0 (music): the figures of the mixture of the model's views -K..K semitones away.
        `ensemble`: more models (or their names / paths) with this one's tokens, mixed in with equal weight; the split
        is this model's. Polyphonic models that read a step's pitches in another order (dataset.pitch_order) mix
        in too, frame by frame (scoring.mix_frames), each scoring the split as its own tokens."""
        split = str(getattr(split, "value", split))
        if split not in SPLITS:
            raise UserError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        check({"batch_size": batch_size, "seq_len": seq_len, "max_tokens": max_tokens, "transpositions": transpositions},
              EVALUATE)
        # The members first: a wrong one is refused before the dataset is read.
        others = [m if isinstance(m, Model) else Model.from_pretrained(m, str(self.device)) for m in ensemble]
        groups: list[list[Model]] = [[self]]  # one per way of writing the tokens; this model's first
        for other in others:
            group = next((g for g in groups if g[0].tokenizer.definition() == other.tokenizer.definition()), None)
            if group is not None:
                group.append(other)
            elif getattr(self.tokenizer, "same_frames", None) and self.tokenizer.same_frames(other.tokenizer):
                groups.append([other])
            else:
                raise UserError(f"ensemble: {other.path} has other tokens than {self.path}; only models trained on "
                                "the same dataset settings can be mixed")
        results, pieces = [], None
        for leader, *members in groups:
            docs = leader.dataset(dataset_path, cache_dir).splits[split]
            if not sum(len(doc) for doc in docs):
                fraction = leader.checkpoint["config"]["dataset"].get(f"{split}_fraction")
                why = f" (it was trained with dataset.{split}_fraction={fraction:g})" if fraction == 0 else ""
                raise UserError(f"the {split} split of {leader.path.name}'s dataset is empty{why}; score another "
                                f"split, e.g. split={'val' if split != 'val' else 'test'}")
            if len(groups) > 1:  # frame by frame: every group must read the same pieces
                rolls = [leader.tokenizer.decode_roll(doc) for doc in docs]
                if pieces is not None and rolls != pieces:
                    raise UserError(f"ensemble: {leader.path} reads other pieces than {self.path} in split={split}; "
                                    "mix models trained on the same dataset")
                pieces = rolls
            results.append(score_documents(leader.net, leader.tokenizer, docs, batch_size, seq_len, self.device,
                                           max_tokens, canonical, transpositions, [m.net for m in members],
                                           keep_frames=len(groups) > 1))
        return results[0] if len(results) == 1 else mix_frames(results)


def load(name_or_path: str | Path | None = None, device: str = "cpu") -> Model:
    """A model by shipped name (shakespeare, bach, jsb, ...) or checkpoint path; None: your default run or shakespeare."""
    return Model.from_pretrained(name_or_path, device)


def preset_values(group: str, name: str) -> dict[str, Any]:
    """conf/<group>/<name>.yaml as a plain dict (the same presets the CLI composes), its `defaults` dropped."""
    path = Path(CONFIG_DIR) / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"there is no {group} preset {name!r}; known: {', '.join(known)}")
    values = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(values, dict)
    values.pop("defaults", None)
    return values


def preset(group: str, name: str, schema: type) -> Any:
    """A preset read onto its schema dataclass."""
    return with_settings(schema(), group, preset_values(group, name))


def _route(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat keyword settings → per section (dataset / model / train), by which schema has the name."""
    sections: dict[str, dict[str, Any]] = {"dataset": {}, "model": {}, "train": {}}
    owners = {f.name: section for section, schema in (("dataset", DatasetConfig), ("model", ModelConfig),
                                                      ("train", TrainConfig)) for f in dataclasses.fields(schema)}
    for key, value in settings.items():
        if key not in owners:
            raise UserError(f"unknown setting {key!r}; settings are the fields of DatasetConfig, ModelConfig and TrainConfig")
        sections[owners[key]][key] = value
    return sections


def tokenize(dataset: str = "shakespeare", **settings: Any) -> Corpus:
    """A dataset preset (shakespeare, text, midi, bach, jsb, ...) with `settings` (e.g. path=...) → its Corpus."""
    # One merge, so a setting left unset in the preset (the pitch range) follows the tokenizer asked for here.
    config = with_settings(DatasetConfig(), "dataset", {**preset_values("dataset", dataset), **settings})
    return load_corpus(config)


def train(
    dataset: str = "shakespeare", *, run_name: str | None = None, checkpoints_dir: str = "${generate_home:}/checkpoints",
    recipe: str = "default", **settings: Any,
) -> RunSummary:
    """Train a model on a dataset preset; any DatasetConfig / ModelConfig / TrainConfig field is a keyword.

    >>> run = generate.train("text", path="input.txt", hidden_size=128, max_steps=200)  # doctest: +SKIP
    >>> generate.load(run.best_path).sample("ROMEO:", length=100)[0]  # doctest: +SKIP
    """
    sections = _route(settings)
    recipe_values = preset_values("train", recipe)
    if not {"model", "train"} & recipe_values.keys():  # a plain train-group file: its keys are train's
        recipe_values = {"train": recipe_values}
    layers = [
        OmegaConf.structured(TrainRunConfig(checkpoints_dir=checkpoints_dir)),
        {"dataset": preset_values("dataset", dataset)},
        recipe_values,
        {name: values for name, values in sections.items() if values},
    ]
    if run_name:
        layers.append({"run_name": run_name})
    try:
        run = to_object(OmegaConf.merge(*layers), TrainRunConfig)
    except UserError:
        raise
    except Exception as err:  # OmegaConf's ValidationError: a value of the wrong type
        raise UserError(f"bad training setting: {str(err).splitlines()[0]}") from None
    given = [repr(dataset), *(f"{k}={v!r}" for k, v in {"run_name": run_name, "recipe": recipe, **settings}.items()
                              if v is not None and k != "resume")]
    return train_run(run, resume_hint="generate.train(...) again with resume=True",
                     recipe=f"generate.train({', '.join(given)})")


def list_models(checkpoints_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The shipped models and your own runs (checkpoints_dir/*/best.pt, default $GENERATE_HOME or ./checkpoints),
    each with its name, origin and card.

    A run that cannot be read is listed with an `error` instead of a card, so one bad file hides nothing else.
    """
    from generate.checkpoint import shipped_models

    found = [(name, path, "shipped") for name, path in shipped_models().items()]
    runs = Path(checkpoints_dir) if checkpoints_dir is not None else home() / "checkpoints"
    found += [(p.parent.name, p, "your run") for p in sorted(runs.glob("*/best.pt"))]
    listed: list[dict[str, Any]] = []
    for name, path, origin in found:
        entry: dict[str, Any] = {"name": name, "path": str(path), "origin": origin}
        try:
            model = Model(load_checkpoint(path), path)
            entry.update(card=model.card(), music=model.is_music)
        except UserError as err:
            entry["error"] = str(err)
        listed.append(entry)
    return listed
